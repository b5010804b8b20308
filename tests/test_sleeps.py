"""Tests wait on conditions (`tests.conftest.eventually`), not on fixed sleeps.

A fixed sleep is either too short on a loaded machine (a flaky test) or too long everywhere (a
slow suite). So every `sleep(` in tests/ says why it is there, in a comment on its line or on
the comment lines just above, starting with one of these tags:

- `slow peer:` a fake Gini, store or caller that is slow on purpose: behaviour under test,
  not waiting;
- `paces:` the rate of a load or of a caller's requests;
- `polls:` the poll interval of the waiting helper itself (conftest.py only);
- `time passes:` a test that needs wall-clock time to pass with nothing to wait for (a timer
  that must not fire). These are the real sleeps; at most MAX_TIME_PASSES of them.

`sleep(0)` is a yield to the event loop, not a wait, and needs no tag.
"""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
TAGS = ("slow peer:", "paces:", "polls:", "time passes:")
MAX_TIME_PASSES = 5
SLEEP = re.compile(r"\bsleep\((?!0\))")


def sleeps(folder: Path) -> dict[str, str | None]:
    """Every sleep call site under `folder` (`file:line`), with its tag or None."""
    found: dict[str, str | None] = {}
    for path in sorted(folder.rglob("*.py")):
        if path.name == Path(__file__).name:
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            if not SLEEP.search(line.split("#", 1)[0]):
                continue
            comments = [line.partition("#")[2]]
            above = number - 1
            while above >= 0 and lines[above].strip().startswith("#"):
                comments.append(lines[above].strip()[1:])
                above -= 1
            tags = [tag for tag in TAGS for text in comments if text.strip().startswith(tag)]
            found[f"{path.relative_to(folder.parent)}:{number + 1}"] = tags[0] if tags else None
    return found


def test_every_sleep_says_why() -> None:
    found = sleeps(TESTS)
    assert [where for where, tag in found.items() if tag is None] == []
    polls = [where for where, tag in found.items() if tag == "polls:"]
    assert [where for where in polls if not where.startswith("tests/conftest.py")] == []


def test_at_most_five_real_sleeps_remain() -> None:
    real = [where for where, tag in sleeps(TESTS).items() if tag == "time passes:"]
    assert len(real) <= MAX_TIME_PASSES, real


def test_an_untagged_sleep_is_found(tmp_path: Path) -> None:
    folder = tmp_path / "tests"
    folder.mkdir()
    (folder / "test_x.py").write_text(
        "import asyncio\n"
        "async def f():\n"
        "    await asyncio.sleep(0)\n"  # a yield: not counted
        "    await asyncio.sleep(0.3)\n"
        "    # time passes: the idle timer must not fire\n"
        "    await asyncio.sleep(1)\n"
        "    time.sleep(0.1)  # slow peer: a slow fake\n",
        encoding="utf-8",
    )
    assert sleeps(folder) == {
        "tests/test_x.py:4": None,
        "tests/test_x.py:6": "time passes:",
        "tests/test_x.py:7": "slow peer:",
    }
