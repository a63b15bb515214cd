"""Remote config (contract: DESIGN.md 1.2 and 1.3): config pushes over MQTT, validated, applied live, answered,
persisted and rolled back; remote model updates; the operator's ``edged config push``/``get``."""
