"""The resource manager: sensors read the board, the governor decides a level and the steps to take."""
