"""What the proxy tells about the actions it takes: the audit log (`audit`) and OpenTelemetry
traces (`tracing`). Both are off unless configured, and cost an `is None` check then."""
