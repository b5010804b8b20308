"""Reading counters from the servers under test: the upstream's login count, the proxy's metrics.

Both are plain HTTP GETs on loopback, made between measurements, never during one.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from typing import Any

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - loopback
        return json.loads(answer.read())


def counter(admin_url: str, name: str, **labels: str) -> float:
    """The sum of the samples of metric `name` whose labels include `labels` (0 if none)."""
    with urllib.request.urlopen(admin_url + "/metrics", timeout=5) as answer:  # noqa: S310
        text = answer.read().decode()
    total = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match["name"] != name:
            continue
        found = {m["key"]: m["value"] for m in _LABEL.finditer(match["labels"] or "")}
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(match["value"])
    return total


def redis_answers(host: str, port: int) -> bool:
    """Whether a Redis server answers PING at host:port (within a second)."""
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def cache_states(url: str, tries: int = 40) -> list[str]:
    """`X-Cache` of successive GETs of `url` (as bench-user) until one is a HIT.

    The proxy stores a fresh answer in the background, so the first GETs may still miss.
    """
    request = urllib.request.Request(url, headers={"X-User-Id": "bench-user"})  # noqa: S310
    states: list[str] = []
    for _ in range(tries):
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - loopback
            answer.read()
            states.append(answer.headers.get("X-Cache", "none"))
        if states[-1] == "HIT":
            break
        time.sleep(0.05)
    return states
