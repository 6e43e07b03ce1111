"""The trace server and its client on the real kernel, tracing fake containers.

Needs root."""
