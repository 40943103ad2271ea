"""The OTLP receiver: OpenTelemetry GenAI spans of real traffic in, ``telemetry.v1`` out."""
