"""Large transfers through the proxy while a thread samples its VmRSS every 10 ms."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from .procs import vm_rss_kib

MIB = 1024 * 1024
CHUNK = 256 * 1024
HEADERS = {"X-User-Id": "bench-user"}


class RssSampler:
    """Samples a process's VmRSS from a thread; `peak_kib` is the highest value seen."""

    def __init__(self, pid: int, interval: float = 0.01):
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, vm_rss_kib(self.pid))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, vm_rss_kib(self.pid))


@dataclass(frozen=True)
class TransferResult:
    what: str
    size: int
    seconds: float
    baseline_kib: int
    peak_kib: int
    samples: int

    @property
    def growth_mib(self) -> float:
        return (self.peak_kib - self.baseline_kib) / 1024

    @property
    def mib_per_s(self) -> float:
        return self.size / MIB / self.seconds if self.seconds else 0.0


async def _body(size: int) -> AsyncIterator[bytes]:
    block = b"\x5a" * CHUNK
    left = size
    while left > 0:
        step = min(left, CHUNK)
        yield block[:step] if step < CHUNK else block
        left -= step


async def _upload(session: aiohttp.ClientSession, url: str, size: int) -> None:
    headers = {
        **HEADERS,
        "Content-Type": "application/octet-stream",
        "Content-Length": str(size),  # the caller's framing, as a document upload has
    }
    async with session.post(url + "/upload", data=_body(size), headers=headers) as answer:
        reply = await answer.json()
        if answer.status != 200 or reply.get("received") != size:
            raise RuntimeError(f"upload through the proxy failed: {answer.status} {reply}")


async def _download(session: aiohttp.ClientSession, url: str, size: int) -> None:
    got = 0
    async with session.get(url + f"/download?bytes={size}", headers=HEADERS) as answer:
        async for chunk in answer.content.iter_chunked(CHUNK):
            got += len(chunk)
        if answer.status != 200 or got != size:
            raise RuntimeError(f"download through the proxy failed: {answer.status}, {got} bytes")


def _baseline(pid: int) -> int:
    """The RSS right before a transfer: the median of a few samples 10 ms apart."""
    samples = []
    for _ in range(5):
        samples.append(vm_rss_kib(pid))
        time.sleep(0.01)
    return sorted(samples)[len(samples) // 2]


async def _measure(
    url: str, pid: int, upload_bytes: int, download_bytes: int
) -> list[TransferResult]:
    timeout = aiohttp.ClientTimeout(total=300)
    results: list[TransferResult] = []
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        for what, size in (("upload", upload_bytes), ("download", download_bytes)):
            baseline = _baseline(pid)
            with RssSampler(pid) as sampler:
                started = time.perf_counter()
                if what == "upload":
                    await _upload(session, url, size)
                else:
                    await _download(session, url, size)
                seconds = time.perf_counter() - started
            results.append(
                TransferResult(what, size, seconds, baseline, sampler.peak_kib, sampler.samples)
            )
    return results


def measure_transfers(
    url: str, pid: int, upload_bytes: int, download_bytes: int
) -> list[TransferResult]:
    """Upload then download through the proxy at `url`, sampling the proxy's (`pid`) RSS."""
    results = asyncio.run(_measure(url, pid, upload_bytes, download_bytes))
    for r in results:
        print(
            f"bench:   {r.what} {r.size / MIB:.0f} MiB in {r.seconds:.2f} s "
            f"({r.mib_per_s:.0f} MiB/s): RSS {r.baseline_kib / 1024:.1f} -> "
            f"{r.peak_kib / 1024:.1f} MiB, growth {r.growth_mib:.1f} MiB ({r.samples} samples)",
            flush=True,
        )
    return results
