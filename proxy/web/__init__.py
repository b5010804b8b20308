"""The inbound HTTP edge shared by every endpoint: the connection guard and timeouts, the
middleware (request ids, inbound auth, metrics, errors), the request context, the route table
and the access log."""
