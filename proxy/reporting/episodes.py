"""Repeated failures of one kind as one episode in the log, instead of one line per failure.

An episode is logged when it starts (the first failure, with its sentence), at most once per
`interval` while it lasts (the failures since the last line, and the total), and once when it
ends (the first success afterwards, with the count and the duration). An outage of Gini or of
the store thus writes a handful of lines, not one per request, and still says when it is over.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

INTERVAL_SECONDS = 60.0


@dataclass(slots=True)
class _Episode:
    message: str  # the first failure's sentence, repeated when the episode ends
    fields: dict[str, Any]
    started: float
    reported: float
    failures: int = 1
    unreported: int = 0


class Episodes:
    """The episodes of one kind of failure, one per key (`(group, detail)`, e.g. an upstream
    and a failure reason). `failed` and `succeeded` are all the callers need."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._open: dict[tuple[str, str], _Episode] = {}

    def active(self, group: str | None = None) -> int:
        """How many episodes are under way (in `group`, or in all)."""
        return sum(1 for g, _ in self._open if group is None or g == group)

    def failed(
        self, group: str, detail: str, message: str, fields: Mapping[str, Any] | None = None
    ) -> None:
        """One failure: logged if it starts an episode, or if `interval` passed since the last
        line of this episode; otherwise only counted."""
        now = self.clock()
        key = (group, detail)
        episode = self._open.get(key)
        if episode is None:
            self._open[key] = _Episode(message, dict(fields or {}), now, now)
            self._log(logging.WARNING, message, fields, "started", failures=1)
            return
        episode.failures += 1
        episode.unreported += 1
        if now - episode.reported >= self.interval:
            since = episode.unreported
            episode.reported, episode.unreported = now, 0
            self._log(
                logging.WARNING,
                f"{message} (still failing: {since} more in {self.interval:.0f} s)",
                fields,
                "ongoing",
                failures=episode.failures,
            )

    def succeeded(self, group: str) -> None:
        """A success in `group`: every episode under way there ends. Cheap when none is."""
        if not self._open:
            return
        now = self.clock()
        for key in [key for key in self._open if key[0] == group]:
            episode = self._open.pop(key)
            seconds = now - episode.started
            self._log(
                logging.INFO,
                f"works again after {episode.failures} failure(s) in {seconds:.0f} s: "
                f"{episode.message}",
                episode.fields,
                "ended",
                failures=episode.failures,
                seconds=round(seconds, 3),
            )

    def _log(
        self,
        level: int,
        message: str,
        fields: Mapping[str, Any] | None,
        state: str,
        **counts: float,
    ) -> None:
        extra = {**(fields or {}), "episode": state, **counts}
        self.logger.log(level, "%s", message, extra=extra)
