"""The audit log (proxy/telemetry/audit.py, scope.py, web/telemetry.py) against real requests
through the proxy to the Gini simulator."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import stat
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from proxy.commands.rotate_key import rotate_store_key
from proxy.config import build_config
from proxy.config.audit import AuditConfig
from proxy.config.reader import ConfigError
from proxy.errors import StartupError
from proxy.identity import derive_identifier
from proxy.metrics.families import audit_counters
from proxy.sandbox import GiniSimulator
from proxy.telemetry.audit import AuditLog
from proxy.telemetry.scope import AuditScope

from .conftest import (
    CLIENT_SECRET,
    HMAC_KEY,
    STORE_KEY,
    RunningProxy,
    StartProxy,
    eventually,
    examples,
)

KEY = "billing:audit-test-key-0123456789"
HEADERS = {"X-Proxy-Key": "audit-test-key-0123456789"}
ALICE = "alice.audited@example.com"
FIELDS = [
    "time",
    "action",
    "request_id",
    "trace_id",
    "caller",
    "user",
    "method",
    "route",
    "status",
    "source",
    "outcome",
    "duration_ms",
]
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def written(path: Path, count: int) -> list[dict[str, Any]]:
    """The file's records once `count` are there (a batch is written within FLUSH_SECONDS)."""
    await eventually(lambda: len(records(path)) >= count, within=5, what=f"{count} records")
    return records(path)


async def send(
    proxy: RunningProxy, method: str, path: str, user: str = ALICE, **headers: str
) -> tuple[int, Any]:
    all_headers = {**HEADERS, "X-User-Id": user, **headers}
    async with proxy.client.request(method, proxy.url + path, headers=all_headers) as response:
        body = await response.read()
        return response.status, json.loads(body) if body.startswith(b"{") else body


def audited(start_proxy: StartProxy, path: Path, **audit: Any) -> Any:
    return start_proxy(
        audit={"path": str(path), **audit}, inbound_auth={"keys": KEY}, listen="127.0.0.1:0"
    )


async def test_one_record_per_action_with_the_contract_fields(
    start_proxy: StartProxy, sim: GiniSimulator, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    proxy = await audited(start_proxy, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (await send(proxy, "GET", "/documents", **{"X-Request-Id": "req-1"}))[0] == 200
    tokens = []
    for route in ("/_proxy/tokens/derived", "/_proxy/tokens/anonymous"):
        for _ in range(2):
            status, body = await send(proxy, "POST", route)
            assert status == 200
            tokens.append(body["access_token"])
    assert (await send(proxy, "DELETE", "/_proxy/users/anonymous"))[0] == 204
    assert (await send(proxy, "GET", "/documents", user=""))[0] == 400
    found = await written(path, 8)
    assert [r["action"] for r in found] == [
        "forward",
        "token.derived",
        "token.derived",
        "user.create",
        "token.anonymous",
        "token.anonymous",
        "user.erase",
        "forward",
    ]
    identifier = derive_identifier(HMAC_KEY.encode(), ALICE)
    for record in found:
        assert list(record) == FIELDS
        assert TIME.fullmatch(record["time"])
        assert record["caller"] == "billing"
        assert record["trace_id"] is None  # no tracing configured
        assert isinstance(record["duration_ms"], float)
        assert record["duration_ms"] >= 0
    first = found[0]
    assert (first["request_id"], first["method"], first["route"]) == ("req-1", "GET", "/documents")
    assert (first["user"], first["status"], first["source"], first["outcome"]) == (
        identifier,
        200,
        None,
        "ok",
    )
    # Token records: fetched from Gini first, then served from the cache.
    assert [(r["source"], r["status"]) for r in found[1:3]] == [("gini", 200), ("cache", 200)]
    assert [r["source"] for r in found[4:6]] == ["gini", "cache"]
    create = found[3]
    assert (create["user"], create["status"], create["outcome"], create["source"]) == (
        identifier,
        201,
        "ok",
        None,
    )
    assert create["request_id"] == found[4]["request_id"]  # within the anonymous token request
    assert (create["method"], create["route"]) == ("POST", "/_proxy/tokens/anonymous")
    assert (found[6]["status"], found[6]["route"]) == (204, "/_proxy/users/anonymous")
    # No valid user id: refused before any account was touched, and no user to name.
    assert (found[7]["user"], found[7]["status"], found[7]["outcome"]) == (None, 400, "refused")
    text = path.read_text()
    for secret in (ALICE, CLIENT_SECRET, HMAC_KEY, HEADERS["X-Proxy-Key"], *tokens):
        assert secret not in text
    registry = proxy.metrics.registry
    assert registry.get_sample_value("gini_proxy_audit_records_total", {"action": "forward"}) == 2
    assert registry.get_sample_value("gini_proxy_audit_errors_total") == 0


async def test_a_gini_error_is_an_error_and_a_caller_request_id_holding_a_secret_is_hidden(
    start_proxy: StartProxy, sim: GiniSimulator, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    proxy = await audited(start_proxy, path)
    sim.state.fail_next(1, 500, "pay")
    status, _ = await send(proxy, "GET", "/documents", **{"X-Request-Id": f"x{CLIENT_SECRET}"})
    (record,) = await written(path, 1)
    assert (record["status"], record["outcome"]) == (status, "error")
    assert record["request_id"] == "[REDACTED]"


async def test_required_and_unwritable_refuses_before_gini(
    start_proxy: StartProxy, sim: GiniSimulator, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    proxy = await audited(start_proxy, path, required=True)
    assert (await send(proxy, "GET", "/documents"))[0] == 200
    await written(path, 1)
    # Unwritable whoever runs the test (root ignores file modes): the path is now a directory.
    path.unlink()
    path.mkdir()
    before = len(sim.state.requests)

    async def refused() -> bool:
        status, body = await send(proxy, "POST", "/_proxy/tokens/anonymous", user="bob")
        return status == 503 and body["error"] == "audit_unavailable"

    await eventually(refused, within=5)
    for method, route in (("GET", "/documents"), ("POST", "/_proxy/tokens/derived")):
        status, body = await send(proxy, method, route, user="carol")
        assert (status, body["error"]) == (503, "audit_unavailable")
        assert body["requestId"]
    assert len(sim.state.requests) == before  # nothing reached Gini
    # Writable again: served and recorded again.
    path.rmdir()

    async def served() -> bool:
        return (await send(proxy, "GET", "/documents"))[0] == 200

    await eventually(served, within=5)
    assert [r["action"] for r in await written(path, 1)] == ["forward"]


async def test_not_required_keeps_serving_counts_and_logs_once(
    start_proxy: StartProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    proxy = await audited(start_proxy, path)
    path.unlink()
    path.mkdir()
    with caplog.at_level(logging.ERROR, "proxy.audit"):
        for _ in range(20):
            assert (await send(proxy, "GET", "/documents"))[0] == 200
    registry = proxy.metrics.registry
    await eventually(
        lambda: (registry.get_sample_value("gini_proxy_audit_errors_total") or 0) >= 1, within=5
    )
    assert len([r for r in caplog.records if r.name == "proxy.audit"]) == 1


async def test_rotation_while_requests_run_loses_no_record(
    start_proxy: StartProxy, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    proxy = await audited(start_proxy, path)
    sent = 0
    done = asyncio.Event()

    async def load() -> None:
        nonlocal sent
        while not done.is_set():
            results = await asyncio.gather(*(send(proxy, "GET", "/documents") for _ in range(8)))
            assert {status for status, _ in results} == {200}
            sent += len(results)

    task = asyncio.create_task(load())
    rotated = []
    for n in range(3):  # logrotate's default: rename, the writer reopens the path
        await eventually(lambda: path.exists() and path.stat().st_size > 0, within=10)
        rotated.append(path.rename(tmp_path / f"audit.jsonl.{n}"))
        await eventually(path.exists, within=10, what="reopened")
    done.set()
    await task
    await eventually(lambda: sum(len(records(p)) for p in [*rotated, path]) >= sent, within=5)
    assert sum(len(records(p)) for p in [*rotated, path]) == sent
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


async def test_stdout_audit(start_proxy: StartProxy, capfd: pytest.CaptureFixture[str]) -> None:
    proxy = await start_proxy(audit={"path": "-"})
    assert (await send(proxy, "GET", "/documents"))[0] == 200
    out = ""

    def arrived() -> bool:
        nonlocal out
        out += capfd.readouterr().out
        return '"action"' in out

    await eventually(arrived, within=5, what="a record on stdout")
    lines = [json.loads(line) for line in out.splitlines() if "action" in line]
    assert [r["action"] for r in lines] == ["forward"]
    assert lines[0]["caller"] is None


def test_check_config_validates_audit(tmp_path: Path) -> None:
    base = {
        "client": {"id": "c", "secret": CLIENT_SECRET},
        "identity": {"hmac_key": HMAC_KEY},
    }
    for audit, words in (
        ({"path": str(tmp_path / "missing" / "a.jsonl")}, "does not exist"),
        ({"path": str(tmp_path)}, "is a directory"),
        ({}, "is required"),
        ({"path": "-", "required": "maybe"}, "true or false"),
    ):
        with pytest.raises(ConfigError) as caught:
            build_config({**base, "audit": audit}, {}, tmp_path)
        assert any(p.startswith("audit.") and words in p for p in caught.value.problems), (
            caught.value.problems
        )
    relative = build_config({**base, "audit": {"path": "a.jsonl"}}, {}, tmp_path).audit
    assert relative is not None
    assert relative.path == tmp_path / "a.jsonl"


async def test_secret_reloads_are_recorded(start_proxy: StartProxy, tmp_path: Path) -> None:
    path, keys = tmp_path / "audit.jsonl", tmp_path / "keys"
    keys.write_text(KEY + "\n")
    proxy = await start_proxy(audit={"path": str(path)}, inbound_auth={"keys": {"file": str(keys)}})
    keys.write_text(f"{KEY}\nmobile:second-audit-key-0123456789\n")
    assert await proxy.services.reloader.reload() == {"inbound_auth.keys": "applied"}
    keys.write_text("short\n")
    assert await proxy.services.reloader.reload() == {"inbound_auth.keys": "error"}
    found = await written(path, 1)  # a file that cannot be applied acts on nothing: not recorded
    assert [(r["action"], r["route"], r["outcome"]) for r in found] == [
        ("secret.reload", "inbound_auth.keys", "ok")
    ]
    assert all(list(r) == FIELDS for r in found)
    assert "second-audit-key" not in path.read_text()


def test_a_store_key_rotation_is_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    data: dict[str, Any] = {
        "client": {"id": "c", "secret": CLIENT_SECRET},
        "identity": {"hmac_key": HMAC_KEY},
        "store": {"url": f"sqlite:///{tmp_path}/store.db", "encryption_key": STORE_KEY},
        "audit": {"path": str(path), "required": True},
    }
    config = build_config(data, {}, tmp_path)
    rotate_store_key(config)
    (record,) = records(path)
    assert list(record) == FIELDS
    assert (record["action"], record["outcome"], record["user"]) == ("store.rotate", "ok", None)
    # Required and unwritable: the rotation does not start.
    path.unlink()
    path.mkdir()
    with pytest.raises(StartupError, match="audit"):
        rotate_store_key(config)
    assert "re-encrypted" in capsys.readouterr().out  # the first run only


def _writer(path: Path) -> tuple[AuditLog, CollectorRegistry]:
    registry = CollectorRegistry()
    audit = AuditLog(AuditConfig(path=path, required=False), *audit_counters(registry))
    audit.open()
    return audit, registry


async def test_records_are_written_together_within_the_flush_interval(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    audit, registry = _writer(path)
    # A caller's request id holding a secret is hidden; quotes and control characters in any
    # field are escaped by json's own quoting.
    audit.secrets = ("planted-secret-value",)
    for n in range(3):
        audit.write(
            "forward",
            f"id-{n}",
            None,
            'a "caller"',
            "u" * 64,
            "GET",
            "/x\n",
            200,
            None,
            "ok",
            0.001 * n,
        )
    audit.write(
        "forward",
        "x-planted-secret-value-y",
        None,
        None,
        None,
        "GET",
        "/x",
        500,
        None,
        "error",
        0.5,
    )
    assert path.read_text() == ""  # nothing yet: the turn is still running
    await asyncio.sleep(0)  # the turn ends; its flush runs in the next
    await eventually(lambda: len(records(path)) == 4, within=2)
    found = records(path)
    assert [r["request_id"] for r in found] == ["id-0", "id-1", "id-2", "[REDACTED]"]
    assert found[0]["caller"] == 'a "caller"'
    assert found[0]["route"] == "/x\n"
    assert [r["duration_ms"] for r in found] == [0.0, 1.0, 2.0, 500.0]
    assert "planted-secret-value" not in path.read_text()
    assert registry.get_sample_value("gini_proxy_audit_records_total", {"action": "forward"}) == 4
    audit.write("user.erase", "id-9", None, None, None, "DELETE", "/x", 200, None, "ok", 0.0)
    audit.close()  # shutdown writes what is pending
    assert records(path)[-1]["action"] == "user.erase"


def test_without_a_loop_a_record_is_written_at_once(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit, _ = _writer(path)
    audit.unrequested("store.rotate", None, "ok", 0.25)
    (record,) = records(path)
    assert record["action"] == "store.rotate"
    assert record["duration_ms"] == 250.0
    audit.close()


_NAME = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)


@settings(max_examples=examples(300))
@given(
    request_id=st.from_regex(r"[A-Za-z0-9._:+/=-]{1,128}", fullmatch=True),
    trace_id=st.none() | st.from_regex(r"[0-9a-f]{32}", fullmatch=True),
    caller=st.none() | _NAME,
    route=st.text(max_size=40),
    status=st.integers(100, 599),
    action=st.sampled_from(["forward", "token.derived", "token.anonymous", "user.erase"]),
    source=st.none() | st.sampled_from(["cache", "fleet", "gini"]),
)
def test_a_request_record_is_json_with_its_fields_as_given(
    tmp_path_factory: pytest.TempPathFactory,
    request_id: str,
    trace_id: str | None,
    caller: str | None,
    route: str,
    status: int,
    action: str,
    source: str | None,
) -> None:
    # The request record is formatted without json's quoting for the fields validated on the
    # way in (ids, caller names, methods, identifiers): any value they admit stays valid JSON.
    path = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    audit, _ = _writer(path)
    deriver = partial(derive_identifier, HMAC_KEY.encode())
    scope = AuditScope(audit, action, request_id, "GET", route, caller, trace_id, deriver, ("u1",))
    scope.source = source
    scope.end(status, 0.0125)
    audit.close()
    (record,) = records(path)
    assert record == {
        "time": record["time"],
        "action": action,
        "request_id": request_id,
        "trace_id": trace_id,
        "caller": caller,
        "user": derive_identifier(HMAC_KEY.encode(), "u1"),
        "method": "GET",
        "route": route,
        "status": status,
        "source": source if action.startswith("token.") else None,
        "outcome": "refused" if 400 <= status < 500 else "ok" if status < 400 else "error",
        "duration_ms": 12.5,
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
