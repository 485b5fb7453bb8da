"""Telemetry: CloudEvents written to a durable outbox, delivered by sinks."""
