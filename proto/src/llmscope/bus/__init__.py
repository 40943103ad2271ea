"""NATS JetStream plumbing shared by every service: connect, streams, publish, consume, dead-letter."""
