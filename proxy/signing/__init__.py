"""Gini's JWT mode: per-user JWTs signed with the configured keys, and their metrics."""
