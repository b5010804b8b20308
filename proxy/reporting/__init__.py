"""How the proxy reports on itself beyond single log lines: failure episodes."""
