"""Errors a user can act on: each names the file or field and what is wrong with it."""


class EdgedError(Exception):
    """Base class: the CLI prints the message and exits non-zero, without a traceback."""


class ModelError(EdgedError):
    """A model file is missing, not ONNX, or has outputs edged cannot decode."""


class SourceError(EdgedError):
    """A video, image or camera source cannot be opened or read."""


class InputError(EdgedError):
    """A file given on the command line is not what the command reads (the CLI exits 2, as for a bad config)."""
