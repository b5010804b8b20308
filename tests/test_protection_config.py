"""`upstream.protection` (proxy/config/protection.py): on by default with the documented
defaults, every key read, every problem reported at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.config import build_config
from proxy.config.protection import BreakerConfig, ProtectionConfig
from proxy.config.reader import ConfigError

BASE: dict[str, Any] = {
    "client": {"id": "my-client", "secret": "client-secret-value-4f1c2e"},
    "identity": {"hmac_key": "hmac-key-0123456789abcdef0123456789abcdef"},
}


def build(protection: Any, tmp_path: Path) -> ProtectionConfig:
    data = {**BASE, "upstream": {"protection": protection}}
    return build_config(data, {}, tmp_path).upstream.protection


def test_on_by_default_with_the_contract_defaults(tmp_path: Path) -> None:
    config = build_config(BASE, {}, tmp_path).upstream.protection
    assert config == ProtectionConfig(
        max_in_flight=512,
        queue_seconds=1,
        honor_retry_after=True,
        max_pause_seconds=60,
        retry_budget_ratio=0.2,
        breaker=BreakerConfig(failure_ratio=0.5, min_calls=20, window_seconds=10, open_seconds=5),
    )


def test_every_key_is_read(tmp_path: Path) -> None:
    config = build(
        {
            "max_in_flight": 4,
            "queue_seconds": 0.5,
            "honor_retry_after": False,
            "max_pause_seconds": 10,
            "retry_budget_ratio": 0.5,
            "breaker": {
                "failure_ratio": 0.9,
                "min_calls": 10,
                "window_seconds": 30,
                "open_seconds": 2,
            },
        },
        tmp_path,
    )
    assert config == ProtectionConfig(4, 0.5, False, 10, 0.5, BreakerConfig(0.9, 10, 30, 2))


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        build(
            {
                "max_in_flight": 0,
                "queue_seconds": -1,
                "honor_retry_after": "sometimes",
                "max_pause_seconds": 0,
                "retry_budget_ratio": 2,
                "surprise": 1,
                "breaker": {
                    "failure_ratio": 0,
                    "min_calls": "many",
                    "window_seconds": 0,
                    "open_seconds": 0,
                    "half_open": 1,
                },
            },
            tmp_path,
        )
    paths = sorted(problem.partition(":")[0] for problem in caught.value.problems)
    prefix = "upstream.protection."
    assert paths == sorted(
        prefix + key
        for key in (
            "max_in_flight",
            "queue_seconds",
            "honor_retry_after",
            "max_pause_seconds",
            "retry_budget_ratio",
            "surprise",
            "breaker.failure_ratio",
            "breaker.min_calls",
            "breaker.window_seconds",
            "breaker.open_seconds",
            "breaker.half_open",
        )
    )


def test_a_section_that_is_not_a_mapping_is_a_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        build("on", tmp_path)
    assert caught.value.problems == ["upstream.protection: must be a mapping"]
