"""Replicas sharing tokens and one Gini fetch per key through Redis (the `fleet` section)."""
