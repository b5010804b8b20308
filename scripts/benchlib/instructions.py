"""`scripts/bench --instructions`: CPU instructions per flow-1 request, counted by callgrind.

Wall-clock figures on a shared 2-core VM move by ±10 % between runs; instruction counts do not
(the same code counts within about 1 % from run to run, whatever else the machine does), so
they are the measure for A/B-testing a change to the hot path. Each server runs under
`valgrind --tool=callgrind` twice, for N1 and N2 requests on 4 keep-alive connections;
the difference divided by N2 - N1 is the cost of one request, startup and shutdown cancelling
out. Instructions are not time (a cache miss costs more than an add), but on the same machine
and interpreter the ratio between two servers tracks their CPU-time ratio.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from .jwt_mode import write_key
from .procs import Processes, free_port
from .servers import CLIENT_ID, CLIENT_SECRET, HMAC_KEY, proxy_config
from .tracing import start_sink, tracing_yaml

CONNECTIONS = 4
USERS = 8  # a few identities, as from one backend
_TOTAL = re.compile(rb"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


@dataclass(frozen=True)
class Count:
    name: str
    per_request: float


async def _drive(url: str, ready: str, requests: int) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(240):  # valgrind makes startup about 50 times slower
            try:
                async with session.get(ready) as answer:
                    if answer.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
        else:
            raise RuntimeError(f"{ready} never answered under valgrind")

        async def one_connection(count: int) -> None:
            for n in range(count):
                headers = {"X-User-Id": f"user-{n % USERS}"}
                async with session.get(url, headers=headers) as answer:
                    if answer.status != 200:
                        raise RuntimeError(f"{url} answered {answer.status}")
                    await answer.read()

        await asyncio.gather(*(one_connection(requests // CONNECTIONS) for _ in range(CONNECTIONS)))


def _instructions(
    procs: Processes, argv: list[str], env: dict[str, str], urls: tuple[str, str], out: Path, n: int
) -> int:
    """Total instructions of one server process that answered `n` requests."""
    trace = out.with_suffix(f".{n}")
    command = [
        shutil.which("valgrind") or "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={trace}",
        *argv,
    ]
    log = out.with_suffix(f".{n}.log").open("wb")
    proc = procs.start("callgrind", command, env=env, stdout=log, stderr=log)
    try:
        asyncio.run(_drive(urls[0], urls[1], n))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    found = _TOTAL.search(trace.read_bytes())
    if found is None:
        raise RuntimeError(f"no instruction total in {trace}")
    return int(found.group(1))


NAMES = ("proxy", "proxy-audit", "proxy-jwt", "proxy-traced", "proxy-sampled", "bare", "lean")
# Tracing to an OTLP sink: at 0.05 with the audit log (the tracing target's proxy), and at 1
# (every request sampled: the cost of one sampled request, export included).
TRACED = {"proxy-traced": 0.05, "proxy-sampled": 1.0}


def count(
    root: Path,
    tmp: Path,
    upstream: str,
    procs: Processes,
    n1: int,
    n2: int,
    names: tuple[str, ...] = NAMES,
) -> list[Count]:
    """Instructions per request of the proxy (access log on; in basic mode, with the audit log
    to a file, in jwt mode, and traced as in `TRACED`), the bare and the lean forwarder."""
    python = str(root / ".venv" / "bin" / "python")
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(root / "scripts"))
    counts = []
    sink = None
    if any(name in TRACED for name in names):
        sink = start_sink(procs, root, tmp)
    for name in names:
        port = free_port()
        url = f"http://127.0.0.1:{port}/documents"
        if name.startswith("proxy"):
            admin = free_port()
            config = tmp / f"instructions-{name}.yaml"
            jwt_key = write_key(tmp) if name == "proxy-jwt" else None
            audit = tmp / "instructions-audit.jsonl"
            extra = f'audit:\n  path: "{audit}"\n' if name == "proxy-audit" else ""
            if name in TRACED:
                assert sink is not None
                ratio = TRACED[name]
                extra = tracing_yaml(f"{sink.url}/v1/traces", ratio, audit if ratio < 1 else None)
            config.write_text(
                proxy_config(
                    port,
                    admin,
                    upstream,
                    access_log=True,
                    cache_backend=None,
                    jwt_key=jwt_key,
                    extra=extra,
                )
            )
            argv = [python, "-m", "proxy", "serve", "--config", str(config)]
            ready = f"http://127.0.0.1:{admin}/healthz"
        else:
            argv = [python, "-m", f"benchlib.{name}", "--port", str(port), "--upstream", upstream]
            argv += ["--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET]
            argv += ["--hmac-key", HMAC_KEY]
            ready = url
        out = tmp / f"callgrind-{name}"
        first = _instructions(procs, argv, env, (url, ready), out, n1)
        second = _instructions(procs, argv, env, (url, ready), out, n2)
        counts.append(Count(name, (second - first) / (n2 - n1)))
        print(f"bench: {name}: {counts[-1].per_request:,.0f} instructions/request", flush=True)
    return counts


def table(counts: list[Count]) -> str:
    base = counts[0]
    lines = [
        f"| server | instructions per request | {base.name} / server |",
        "|---|---:|---:|",
    ]
    for c in counts:
        lines.append(
            f"| {c.name} | {c.per_request:,.0f} | {base.per_request / c.per_request:.3f} |"
        )
    found = {c.name: c.per_request for c in counts}
    targets = [(n, t) for n, t in (("lean", 0.85), ("bare", 0.90)) if n in found]
    if "proxy" in found and targets:
        lines.append("")
        lines.append(
            "Targets as instruction ratios (information; the verdict is the wall-clock bench):"
        )
        for name, target in targets:
            lines.append(
                f"- proxy throughput >= {target} x {name}: {found[name] / found['proxy']:.3f} x"
            )
    return "\n".join(lines)


def available() -> bool:
    return shutil.which("valgrind") is not None


if __name__ == "__main__":  # pragma: no cover - used through scripts/bench --instructions
    sys.exit("run it as: scripts/bench --instructions")
