"""Benchmark harness for gini-auth-proxy: `scripts/bench` runs `python -m benchlib`.

Every server is a separate process: a local upstream (nginx and/or a small aiohttp app), the
bare aiohttp forwarder used as the baseline, and the real proxy started from its console script.
Load comes from `wrk`; memory figures come from `/proc/PID/status`.
"""
