"""Re-reading `{file:}` secrets on SIGHUP and every `reload_interval_seconds`.

A `SecretSource` names its files, how to turn their bytes into a value, how to prove a new value
works (optional) and how to put it in force. The reloader compares file contents (a digest),
never mtimes: Kubernetes updates a Secret volume by flipping a `..data` symlink, and every read
here opens the path afresh, so it follows the link to whatever it points at now.

Consumers never call in here per request: `apply` swaps a precomputed attribute (a header
string, a key tuple) that the hot path reads as before. A value that cannot be read, or is empty,
is never applied; one that `verify` refuses neither. Both are retried on the next pass.

Files are read, and turned into values, off the event loop with a deadline (`files.OffLoop`):
a FIFO, a directory or a hung mount at a secret's path counts `error` and never stalls serving.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from proxy.config.files import MAX_FILE_BYTES, OffLoop, read_regular
from proxy.metrics import RELOAD_RESULTS, Metrics

log = logging.getLogger("proxy.reload")

MAX_SECRET_FILE_BYTES = MAX_FILE_BYTES
URGENT_MIN_SECONDS = 5.0  # at most one out-of-turn check per source this often
Verdict = Literal["accepted", "refused", "unavailable"]
Result = Literal["applied", "rejected", "unchanged", "error"]


class InvalidSecret(ValueError):
    """A file's content cannot be used (empty, not UTF-8, malformed). The message says why and
    never quotes the content."""


@dataclass(eq=False)
class SecretSource:
    """One reloadable (or restart-only) secret, registered with the `Reloader`.

    `load` turns the files' bytes into a value (raising InvalidSecret); `apply` puts it in
    force; `verify`, when set, must answer "accepted" before `apply` runs. Without `apply` the
    source is restart-only: a change is logged as needing a restart and otherwise ignored.
    """

    name: str  # the config key; also the `secret` label of gini_proxy_secret_reloads_total
    paths: tuple[Path, ...]
    load: Callable[[tuple[bytes, ...]], Any]
    current: Any  # the value in force (compared, so a rewrite of the same value is no change)
    apply: Callable[[Any], object] | None = None
    verify: Callable[[Any], Awaitable[Verdict]] | None = None
    secrets: Callable[[Any], Iterable[str]] = lambda _: ()  # values the log redactor must know
    note: str = ""  # restart-only: what a restart with the new value would mean
    settled: bytes | None = field(default=None, init=False)  # digest last found in force
    warned: bytes | None = field(default=None, init=False)  # restart-only: digest warned about
    last_urgent: float = field(default=float("-inf"), init=False)


def text_value(contents: tuple[bytes, ...]) -> str:
    """One file holding one secret: UTF-8, surrounding whitespace stripped, not empty."""
    try:
        value = contents[0].decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidSecret("the file is not UTF-8 text") from None
    if not value:
        raise InvalidSecret("the file is empty")
    return value


def read_files(paths: tuple[Path, ...]) -> tuple[bytes, ...]:
    """Every file read afresh (following symlinks); OSError when one cannot be, or is not a
    regular file. Blocking: a pass runs it through `OffLoop`."""
    return tuple(read_regular(path, MAX_SECRET_FILE_BYTES) for path in paths)


def _digest(contents: tuple[bytes, ...]) -> bytes:
    hasher = hashlib.sha256()
    for data in contents:  # length-prefixed: ("ab", "c") and ("a", "bc") differ
        hasher.update(len(data).to_bytes(8, "big"))
        hasher.update(data)
    return hasher.digest()


class Reloader:
    """The registry of secret sources and the passes over them (periodic, SIGHUP, urgent)."""

    def __init__(
        self,
        metrics: Metrics,
        interval: float,
        on_secrets: Callable[[Iterable[str]], None] = lambda _: None,
    ):
        self.metrics = metrics
        self.interval = interval
        self.on_secrets = on_secrets  # told every value read, before it is verified or used
        # Told each pass's result per source (name, result, seconds): the audit log's hook.
        self.on_result: Callable[[str, Result, float], None] | None = None
        self.sources: dict[str, SecretSource] = {}
        self._lock = asyncio.Lock()
        self.off_loop = OffLoop()  # file reads and loads: in a thread, bounded in time
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    def register(self, source: SecretSource) -> None:
        """Add a source; its counters start at 0 so alert expressions see the series."""
        self.sources[source.name] = source
        if source.apply is not None:
            for result in RELOAD_RESULTS:
                self.metrics.secret_reloads.labels(source.name, result)

    # -- running --------------------------------------------------------------------------

    def start(self) -> None:
        """Begin the periodic passes (none when the interval is 0 or nothing is watched)."""
        if self.interval > 0 and self.sources and self._loop_task is None:
            self._loop_task = asyncio.create_task(self._every_interval())

    async def close(self) -> None:
        tasks = [*self._tasks, *([self._loop_task] if self._loop_task else [])]
        self._loop_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _every_interval(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.reload()

    def trigger(self, *names: str) -> None:
        """Run a pass soon without waiting for it (the SIGHUP handler; `names`: only those)."""
        task = asyncio.create_task(self.reload(*names))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def urgent(self, name: str) -> Callable[[], None]:
        """A hook for consumers that saw Gini refuse the value in force: re-check `name` at
        once (a new value may be waiting), at most every URGENT_MIN_SECONDS."""

        def hint() -> None:
            source = self.sources.get(name)
            now = time.monotonic()
            if source is not None and now - source.last_urgent >= URGENT_MIN_SECONDS:
                source.last_urgent = now
                log.info("Gini refused the value in force; checking for a new one",
                         extra={"config_key": name})  # fmt: skip
                self.trigger(name)

        return hint

    async def reload(self, *names: str) -> dict[str, Result]:
        """One pass over the sources (all, or `names`); the result for each one checked."""
        async with self._lock:  # passes never overlap: one verification per new value
            results: dict[str, Result] = {}
            for name, source in list(self.sources.items()):
                if names and name not in names:
                    continue
                started = time.perf_counter()
                try:
                    results[name] = await self._check(source)
                except Exception:  # a bug here must not end the periodic task
                    log.exception("secret reload failed", extra={"config_key": name})
                    results[name] = "error"
                if source.apply is not None:  # restart-only sources are not counted
                    self.metrics.secret_reloads.labels(name, results[name]).inc()
                    if self.on_result is not None:
                        self.on_result(name, results[name], time.perf_counter() - started)
            return results

    async def _check(self, source: SecretSource) -> Result:
        loaded = await self._load(source)
        if isinstance(loaded, str):
            return loaded
        digest, value = loaded
        name = source.name
        if source.apply is None:
            if digest != source.warned:
                source.warned = digest
                log.warning("%s changed on disk, but it is only read at startup: the value read "
                            "then stays in use until a restart", name,
                            extra={"config_key": name, "note": source.note})  # fmt: skip
            return "unchanged"
        if source.verify is not None:
            verdict = await source.verify(value)
            if verdict != "accepted":
                refused = verdict == "refused"
                log.warning("Gini refused the new secret; the value in force stays" if refused
                            else "could not verify the new secret with Gini; will retry",
                            extra={"config_key": name})  # fmt: skip
                return "rejected" if refused else "error"
        source.apply(value)
        source.current = value
        source.settled = digest
        log.info("new secret applied", extra={"config_key": name})
        return "applied"

    async def _load(self, source: SecretSource) -> tuple[bytes, Any] | Result:
        """The new content's digest and value, or the result when there is nothing to apply."""
        name = source.name
        try:
            contents = await self.off_loop.run(name, lambda: read_files(source.paths))
        except OSError as exc:
            log.warning("cannot read secret file; the value in force stays",
                        extra={"config_key": name, "reason": exc.strerror or str(exc)})  # fmt: skip
            return "error"
        digest = _digest(contents)
        if digest == source.settled:
            return "unchanged"
        try:
            # Off the loop too: parsing keys costs CPU, and a TLS load opens the files again.
            value = await self.off_loop.run(name, lambda: source.load(contents))
        except OSError as exc:
            log.warning("cannot load secret file; the value in force stays",
                        extra={"config_key": name, "reason": exc.strerror or str(exc)})  # fmt: skip
            return "error"
        except InvalidSecret as exc:
            log.warning("new secret not usable; the value in force stays",
                        extra={"config_key": name, "reason": str(exc)})  # fmt: skip
            return "error"
        self.on_secrets(source.secrets(value))
        if value == source.current:
            source.settled = digest
            return "unchanged"
        return digest, value
