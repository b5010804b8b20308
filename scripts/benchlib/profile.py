"""`scripts/bench --profile`: where the proxy spends its CPU under load, by stage and by
function (py-spy).

py-spy samples the proxy process's Python stacks while wrk drives it at 32 connections. It is
installed with pip into a folder under /tmp (never into the project's venv) when missing.
Time spent in C (uvloop, aiohttp's parser, system calls) is charged to the Python function
that called it, so "self" time of `StreamWriter._write` is mostly the `send` system call.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from .procs import Processes
from .servers import Server
from .stages import stage_table
from .wrk import Wrk

_ROOT = Path(__file__).resolve().parents[2]

PY_SPY_DIR = Path("/tmp/gini-bench-py-spy")  # noqa: S108 - a tool cache, outside the repo
_FRAME = re.compile(r"(?P<func>.*) \((?P<file>.*?)(?::\d+)?\)$")


def ensure_py_spy() -> str:
    found = shutil.which("py-spy") or str(PY_SPY_DIR / "bin" / "py-spy")
    if Path(found).exists():
        return found
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(PY_SPY_DIR)]
    argv.append("py-spy")
    print(f"bench: py-spy is missing; installing it outside the venv: {' '.join(argv)}")
    subprocess.run(argv, check=True)  # noqa: S603 - fixed argv
    return str(PY_SPY_DIR / "bin" / "py-spy")


def _frame(text: str) -> str:
    match = _FRAME.match(text.strip())
    if match is None:
        return text.strip()
    path = match["file"]
    path = re.sub(r".*/site-packages/", "", path)
    path = re.sub(r".*/lib/python3\.\d+/", "", path)
    path = re.sub(rf"^{re.escape(str(_ROOT))}/", "", path)  # the repository's own files
    return f"{match['func']} ({path})"


def samples(raw: Path) -> list[tuple[list[str], int]]:
    """py-spy's collapsed stacks: (frames outermost first, sample count)."""
    out = []
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out.append(([_frame(f) for f in stack.split(";")], int(count)))
    return out


def summarize(stacks: list[tuple[list[str], int]], top: int = 25) -> str:
    """Self and inclusive shares by function."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for frames, count in stacks:
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if not total:
        return "no samples"
    out = [f"{total} samples of the server's busy time", "", "| self % | function (self time) |"]
    out.append("|------:|---|")
    out += [f"| {100 * n / total:5.1f} | {name} |" for name, n in own.most_common(top)]
    out += ["", "| incl % | function (inclusive time, asyncio runner frames left out) |"]
    out.append("|------:|---|")
    skip = ("<module>", "main (", "serve (", "run_async (", "Runner.run (", "_run_")
    rows = [(n, name) for name, n in inclusive.most_common() if not name.startswith(skip)]
    out += [f"| {100 * n / total:5.1f} | {name} |" for n, name in rows[:top]]
    return "\n".join(out)


def profile(
    procs: Processes,
    wrk: Wrk,
    server: Server,
    tmp: Path,
    warmup: int,
    seconds: int,
    path: str = "/documents",
    method: str = "GET",
) -> str:
    py_spy = ensure_py_spy()
    url = server.url + path
    wrk.run(url, 32, warmup, method=method)
    raw = tmp / ("py-spy-" + re.sub(r"[^a-z]+", "-", server.name).strip("-") + ".txt")
    argv = [py_spy, "record", "--pid", str(server.pid), "--duration", str(seconds)]
    argv += ["--rate", "100", "--format", "raw", "--output", str(raw)]
    spy = procs.start("py-spy", argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    result = wrk.run(url, 32, seconds + 2, server.pid, method)
    _, err = spy.communicate(timeout=60)
    procs.stop(spy)
    if not raw.exists():
        raise RuntimeError(f"py-spy recorded nothing: {err.decode(errors='replace')[-400:]}")
    head = (
        f"## {server.name}: py-spy profile of {method} {path} at 32 connections "
        f"({result.rps:.0f} req/s while sampled, {result.cpu_us_per_request:.0f} us CPU/request)"
    )
    stacks = samples(raw)
    by_stage = stage_table(stacks, result.cpu_us_per_request)
    return f"{head}\n\n{by_stage}\n\n{summarize(stacks)}"
