"""Secret reload: files swapped the way Kubernetes swaps them, a simulator whose accepted client
secrets change (old, both, new), a real proxy in front of it, and one real process on SIGHUP."""

from __future__ import annotations

import ast
import asyncio
import io
import logging
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from proxy.app import Services
from proxy.config import MIN_INBOUND_KEY_BYTES, build_config
from proxy.config.inbound import CALLER_NAME
from proxy.config.reader import ConfigError
from proxy.config.reload import InvalidSecret
from proxy.credentials import PROBE_IDENTIFIER, basic_auth
from proxy.identity import derive_identifier
from proxy.log import Redactor, configure_logging
from proxy.sandbox import GiniSimulator

from .conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    HMAC_KEY,
    INBOUND_KEY,
    USER,
    RunningProxy,
    StartProxy,
    config_data,
    eventually,
    merge,
    paced_load,
)
from .secret_volume import SecretVolume
from .test_server import free_port, spawn

NEW_SECRET = "rotated-client-secret-2b8e41"
NEWER_SECRET = "rotated-again-client-secret-93c0d7"
WRONG_SECRET = "typo-in-the-client-secret-000"
OTHER_KEY = "second-inbound-key-abcdef0123"


@pytest.fixture
def volume(tmp_path: Path) -> SecretVolume:
    return SecretVolume(tmp_path / "secrets")


def basic(secret: str) -> str:
    return basic_auth(CLIENT_ID, secret)


def pay_authorizations(sim: GiniSimulator) -> list[str]:
    """The Authorization of every flow-1 / login request Gini received, oldest first."""
    return [
        value
        for record in sim.state.requests_of("pay")
        for name, value in record.headers
        if name.lower() == "authorization"
    ]


def reloads(proxy: RunningProxy, secret: str, result: str) -> float:
    value = proxy.metrics.registry.get_sample_value(
        "gini_proxy_secret_reloads_total", {"secret": secret, "result": result}
    )
    return value or 0.0


async def documents(proxy: RunningProxy, user: str = "alice@example.com") -> int:
    async with proxy.client.get(proxy.url + "/documents", headers={"X-User-Id": user}) as answer:
        await answer.read()
        return answer.status


async def load_runs(statuses: list[int], requests: int = 15) -> None:
    """Wait until the paced load has made `requests` more requests."""
    mark = len(statuses)
    await eventually(lambda: len(statuses) >= mark + requests, what="load")


async def client_secret_proxy(
    start_proxy: StartProxy, volume: SecretVolume, **overrides: Any
) -> RunningProxy:
    volume.write(client_secret=CLIENT_SECRET)
    return await start_proxy(
        client={"secret": {"file": str(volume.path("client_secret"))}},
        **{"reload_interval_seconds": 0, **overrides},
    )


# --- client.secret: verify before swap ---------------------------------------------------------


async def test_new_client_secret_applies_on_reload_after_the_user_center_accepts_it(
    start_proxy: StartProxy, sim: GiniSimulator, volume: SecretVolume
) -> None:
    proxy = await client_secret_proxy(start_proxy, volume)
    assert await documents(proxy) == 200
    sim.accept_client_secrets(CLIENT_SECRET, NEW_SECRET)
    volume.write(client_secret=NEW_SECRET)
    assert pay_authorizations(sim)[-1] == basic(CLIENT_SECRET), "nothing changes before a reload"

    assert await proxy.services.reloader.reload() == {"client.secret": "applied"}
    # The anonymous flow is configured: the User Center's client-credentials grant was the proof.
    probe = sim.state.requests_of("uc")[-1]
    assert probe.query_string == "grant_type=client_credentials"
    assert ("Authorization", basic(NEW_SECRET)) in probe.headers
    sim.accept_client_secrets(NEW_SECRET)  # Gini drops the old secret
    assert await documents(proxy) == 200
    assert pay_authorizations(sim)[-1] == basic(NEW_SECRET)
    async with proxy.client.post(proxy.url + "/_proxy/tokens/derived", headers=USER) as answer:
        assert answer.status == 200
    assert reloads(proxy, "client.secret", "applied") == 1
    assert await proxy.services.reloader.reload() == {"client.secret": "unchanged"}


async def test_without_the_anonymous_flow_the_probe_is_a_login_for_a_fixed_identifier(
    start_proxy: StartProxy, sim: GiniSimulator, volume: SecretVolume
) -> None:
    proxy = await client_secret_proxy(start_proxy, volume, anonymous=None, store=None)
    sim.accept_client_secrets(CLIENT_SECRET, NEW_SECRET)
    volume.write(client_secret=NEW_SECRET)
    assert await proxy.services.reloader.reload() == {"client.secret": "applied"}
    probe = sim.state.requests_of("pay")[-1]
    assert probe.path == "/login"
    assert ("X-User-Identifier", PROBE_IDENTIFIER) in probe.headers
    assert ("Authorization", basic(NEW_SECRET)) in probe.headers
    assert not sim.state.requests_of("uc")


async def test_new_client_secret_is_used_within_one_interval(
    start_proxy: StartProxy, sim: GiniSimulator, volume: SecretVolume
) -> None:
    proxy = await client_secret_proxy(start_proxy, volume, reload_interval_seconds=0.3)
    sim.accept_client_secrets(CLIENT_SECRET, NEW_SECRET)
    volume.write(client_secret=NEW_SECRET)
    flipped = time.monotonic()

    async def uses_new() -> bool:
        return await documents(proxy) == 200 and pay_authorizations(sim)[-1] == basic(NEW_SECRET)

    await eventually(uses_new, within=2.0)
    assert time.monotonic() - flipped < 1.5


async def test_a_refused_secret_is_never_used_and_counted_rejected(
    start_proxy: StartProxy,
    sim: GiniSimulator,
    volume: SecretVolume,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = await client_secret_proxy(start_proxy, volume)
    volume.write(client_secret=WRONG_SECRET)
    with caplog.at_level(logging.INFO):
        assert await proxy.services.reloader.reload() == {"client.secret": "rejected"}
        assert await documents(proxy) == 200
        assert await proxy.services.reloader.reload() == {"client.secret": "rejected"}  # retried
    assert reloads(proxy, "client.secret", "rejected") == 2
    assert set(pay_authorizations(sim)) == {basic(CLIENT_SECRET)}
    assert "Gini refused the new secret" in caplog.text
    assert WRONG_SECRET not in caplog.text
    assert basic(WRONG_SECRET) not in caplog.text
    # The operator fixes the file: the right secret is accepted and applied.
    sim.accept_client_secrets(CLIENT_SECRET, NEW_SECRET)
    volume.write(client_secret=NEW_SECRET)
    assert await proxy.services.reloader.reload() == {"client.secret": "applied"}


async def test_a_gini_outage_during_verification_is_an_error_and_retried(
    start_proxy: StartProxy, sim: GiniSimulator, volume: SecretVolume
) -> None:
    proxy = await client_secret_proxy(start_proxy, volume, upstream={"max_retries": 0})
    sim.accept_client_secrets(CLIENT_SECRET, NEW_SECRET)
    volume.write(client_secret=NEW_SECRET)
    sim.state.fail_next(1, 503, app="uc")
    assert await proxy.services.reloader.reload() == {"client.secret": "error"}
    assert await documents(proxy) == 200
    assert pay_authorizations(sim)[-1] == basic(CLIENT_SECRET)
    assert await proxy.services.reloader.reload() == {"client.secret": "applied"}
    assert reloads(proxy, "client.secret", "error") == 1


async def test_gini_refusing_the_old_secret_verifies_the_waiting_one_at_once(
    start_proxy: StartProxy, sim: GiniSimulator, volume: SecretVolume
) -> None:
    # SIGHUP only: nothing but the 401 can make the proxy look at the file again.
    proxy = await client_secret_proxy(start_proxy, volume)
    volume.write(client_secret=NEW_SECRET)
    assert await proxy.services.reloader.reload() == {"client.secret": "rejected"}  # too early
    sim.accept_client_secrets(NEW_SECRET)  # Gini switched: the old secret is refused now
    assert await documents(proxy) == 401

    async def recovered() -> bool:
        return await documents(proxy) == 200

    await eventually(recovered)
    assert reloads(proxy, "client.secret", "applied") == 1


@pytest.mark.parametrize("content", ["", "  \n", "\udcff"])
async def test_an_empty_or_unreadable_client_secret_is_never_applied(
    start_proxy: StartProxy, sim: GiniSimulator, volume: SecretVolume, content: str
) -> None:
    proxy = await client_secret_proxy(start_proxy, volume)
    raw = content.encode("utf-8", "surrogateescape")
    target = volume.path("client_secret").resolve()
    target.write_bytes(raw)  # truncated in place, or bytes that are no text
    assert await proxy.services.reloader.reload() == {"client.secret": "error"}
    volume.path("client_secret").unlink()  # and a file that is gone
    assert await proxy.services.reloader.reload() == {"client.secret": "error"}
    assert await documents(proxy) == 200
    assert set(pay_authorizations(sim)) == {basic(CLIENT_SECRET)}
    assert all(r.path != "/login" for r in sim.state.requests_of("pay"))
    assert not sim.state.requests_of("uc"), "nothing empty was ever sent to Gini"
    assert reloads(proxy, "client.secret", "error") == 2


async def test_a_reloaded_secret_is_redacted_from_logs_like_one_read_at_startup(
    start_proxy: StartProxy, sim: GiniSimulator, volume: SecretVolume
) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    stream = io.StringIO()
    try:
        proxy = await client_secret_proxy(start_proxy, volume)
        configure_logging("info", Redactor(proxy.config.secrets()), stream)
        sim.accept_client_secrets(CLIENT_SECRET, NEW_SECRET)
        volume.write(client_secret=NEW_SECRET)
        assert await proxy.services.reloader.reload() == {"client.secret": "applied"}
        logging.getLogger("some.library").warning("oops: %s / %s", NEW_SECRET, CLIENT_SECRET)
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
    text = stream.getvalue()
    assert "new secret applied" in text
    assert "oops: [REDACTED] / [REDACTED]" in text
    assert NEW_SECRET not in text
    assert NEW_SECRET in proxy.services.access_log.secrets


async def test_env_and_inline_secrets_are_not_watched(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(reload_interval_seconds=0)
    assert proxy.services.reloader.sources == {}
    assert await proxy.services.reloader.reload() == {}


# --- inbound_auth.keys ---------------------------------------------------------------------


async def test_inbound_keys_added_and_removed_within_one_interval(
    start_proxy: StartProxy, volume: SecretVolume, caplog: pytest.LogCaptureFixture
) -> None:
    volume.write(keys=f"# deploy keys\n{INBOUND_KEY}\n")
    proxy = await start_proxy(
        inbound_auth={"keys": {"file": str(volume.path("keys"))}}, reload_interval_seconds=0.3
    )

    async def status(key: str) -> int:
        async with proxy.client.get(
            proxy.url + "/_sandbox/echo", headers={**USER, "X-Proxy-Key": key}
        ) as answer:
            await answer.read()
            return answer.status

    assert await status(INBOUND_KEY) == 200
    assert await status(OTHER_KEY) == 401
    volume.write(keys=f"{INBOUND_KEY}\n{OTHER_KEY}\n")

    async def other_works() -> bool:
        return await status(OTHER_KEY) == 200

    await eventually(other_works, within=1.5)
    volume.write(keys=f"{OTHER_KEY}\n")

    async def first_refused() -> bool:
        return await status(INBOUND_KEY) == 401

    await eventually(first_refused, within=1.5)
    assert await status(OTHER_KEY) == 200
    # An emptied key file, or one holding only comments or a short key, locks no one out.
    errors = reloads(proxy, "inbound_auth.keys", "error")
    with caplog.at_level(logging.WARNING):
        for broken in ("", "# all keys removed\n", "short\n"):
            volume.write(keys=broken)
            assert await proxy.services.reloader.reload() == {"inbound_auth.keys": "error"}
            assert await status(OTHER_KEY) == 200
    assert reloads(proxy, "inbound_auth.keys", "error") >= errors + 3
    assert OTHER_KEY not in caplog.text
    assert "new secret not usable" in caplog.text


# --- restart-only values -------------------------------------------------------------------


async def test_a_changed_hmac_key_is_logged_as_needing_a_restart_and_ignored(
    start_proxy: StartProxy,
    sim: GiniSimulator,
    volume: SecretVolume,
    caplog: pytest.LogCaptureFixture,
) -> None:
    volume.write(hmac_key=HMAC_KEY)
    proxy = await start_proxy(
        identity={"hmac_key": {"file": str(volume.path("hmac_key"))}}, reload_interval_seconds=0
    )
    other_key = "a-completely-different-hmac-key-0123456789"
    volume.write(hmac_key=other_key)
    with caplog.at_level(logging.WARNING):
        await proxy.services.reloader.reload()
        await proxy.services.reloader.reload()  # warned once per change, not every pass
    warnings = [r for r in caplog.records if "only read at startup" in r.getMessage()]
    assert len(warnings) == 1
    assert "identity.hmac_key" in warnings[0].getMessage()
    assert other_key not in caplog.text
    assert await documents(proxy) == 200
    expected = derive_identifier(HMAC_KEY.encode(), "alice@example.com")
    assert ("X-User-Identifier", expected) in sim.state.requests_of("pay")[-1].headers
    assert (
        proxy.metrics.registry.get_sample_value(
            "gini_proxy_secret_reloads_total", {"secret": "identity.hmac_key", "result": "applied"}
        )
        is None
    )  # restart-only values are not a reload


@pytest.mark.postgres
async def test_store_password_applies_to_new_connections(
    postgres_dsn: str, start_proxy: StartProxy, volume: SecretVolume
) -> None:
    volume.write(password="first-password")  # the test server trusts loopback and ignores it
    proxy = await start_proxy(
        store={
            "url": postgres_dsn,  # the test's own schema, never the database's `public`
            "password": {"file": str(volume.path("password"))},
        },
        reload_interval_seconds=0,
    )
    store: Any = proxy.services.store
    store = store.inner  # the PostgresStore behind the health gate requests go through
    volume.write(password="second-password")
    assert await proxy.services.reloader.reload() == {"store.password": "applied"}
    assert store.password == "second-password"
    assert store._current_password() == "second-password"  # what asyncpg asks per connection
    await store.ping()
    volume.write(password="")
    assert await proxy.services.reloader.reload() == {"store.password": "error"}
    assert store.password == "second-password"


# --- rotation under load -------------------------------------------------------------------


@pytest.mark.slow
async def test_three_rotations_under_load_fail_no_request(
    start_proxy: StartProxy, sim: GiniSimulator, volume: SecretVolume
) -> None:
    proxy = await client_secret_proxy(start_proxy, volume, reload_interval_seconds=0.2)
    statuses: list[int] = []
    stop = asyncio.Event()

    async def one(n: int) -> None:
        user = {"X-User-Id": f"user-{n}"}  # a new user each time: a fresh /login per token
        path = "/documents" if n % 2 else "/_proxy/tokens/derived"
        method = "GET" if n % 2 else "POST"
        async with proxy.client.request(method, proxy.url + path, headers=user) as answer:
            await answer.read()
            statuses.append(answer.status)

    loader = asyncio.create_task(paced_load(one, stop))
    started = time.monotonic()
    current = CLIENT_SECRET
    for new in (NEW_SECRET, NEWER_SECRET, CLIENT_SECRET + "-3"):
        sim.accept_client_secrets(current, new)  # 1. at Gini: add the new secret
        volume.write(client_secret=new)  # 2. in the Secret
        applied = reloads(proxy, "client.secret", "applied")

        async def swapped(before: float = applied) -> bool:
            return reloads(proxy, "client.secret", "applied") > before

        await eventually(swapped)  # 3. watch the reload apply
        await load_runs(statuses)  # ...under load with both secrets
        sim.accept_client_secrets(new)  # 4. at Gini: remove the old one
        current = new
        await load_runs(statuses)
    stop.set()
    await loader
    elapsed = time.monotonic() - started
    assert len(statuses) >= 50 * elapsed * 0.6, (len(statuses), elapsed)  # ~50 req/s held
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert reloads(proxy, "client.secret", "applied") == 3
    assert reloads(proxy, "client.secret", "rejected") == 0
    assert pay_authorizations(sim)[-1] == basic(current)


# --- the real process ----------------------------------------------------------------------


@pytest.mark.slow
async def test_sighup_applies_a_new_secret_in_the_same_process(
    sim: GiniSimulator, tmp_path: Path, volume: SecretVolume
) -> None:
    volume.write(client_secret=CLIENT_SECRET, keys=INBOUND_KEY)
    listen, admin = free_port(), free_port()
    data = merge(
        config_data(sim, tmp_path),
        {
            "listen": f"127.0.0.1:{listen}",
            "admin_listen": f"127.0.0.1:{admin}",
            "client": {"secret": {"file": str(volume.path("client_secret"))}},
            "inbound_auth": {"keys": {"file": str(volume.path("keys"))}},
            "reload_interval_seconds": 0,
        },
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = await spawn("serve", "--config", str(path))
    try:
        await proc.wait_for(rb"gini-auth-proxy ready")
        pid = proc.process.pid
        url, admin_url = f"http://127.0.0.1:{listen}", f"http://127.0.0.1:{admin}"
        headers = {**USER, "X-Proxy-Key": INBOUND_KEY}
        async with aiohttp.ClientSession() as client:

            async def status_of(key: str = INBOUND_KEY) -> int:
                async with client.get(
                    url + "/documents", headers={**headers, "X-Proxy-Key": key}
                ) as answer:
                    return answer.status

            async def uptime() -> float:
                async with client.get(admin_url + "/status") as answer:
                    return float((await answer.json())["uptime_seconds"])

            assert await status_of() == 200
            before = await uptime()
            sim.accept_client_secrets(CLIENT_SECRET, NEW_SECRET)
            volume.write(client_secret=NEW_SECRET, keys=OTHER_KEY)
            # A new listen address in the config file is only noted: it needs a restart.
            path.write_text(yaml.safe_dump({**data, "listen": f"127.0.0.1:{free_port()}"}))
            # time passes: a negative check (no reload without SIGHUP) has no event to wait on
            await asyncio.sleep(0.3)
            assert pay_authorizations(sim)[-1] == basic(CLIENT_SECRET)
            proc.process.send_signal(signal.SIGHUP)

            async def both_applied() -> bool:
                async with client.get(admin_url + "/metrics") as answer:
                    text = await answer.text()
                return all(
                    f'gini_proxy_secret_reloads_total{{result="applied",secret="{name}"}} 1.0'
                    in text
                    for name in ("client.secret", "inbound_auth.keys")
                )

            await eventually(both_applied)
            await proc.wait_for(rb"config file changed on disk, but it is only read at startup")
            sim.accept_client_secrets(NEW_SECRET)
            assert await status_of(OTHER_KEY) == 200
            assert await status_of(INBOUND_KEY) == 401
            assert pay_authorizations(sim)[-1] == basic(NEW_SECRET)
            assert await uptime() >= before
        assert proc.process.pid == pid
        assert proc.process.returncode is None
        os.kill(pid, 0)  # the same process is still there
        proc.process.send_signal(signal.SIGTERM)
        assert await proc.finish() == 0
        output = proc.output.decode()
        for secret in (NEW_SECRET, OTHER_KEY, CLIENT_SECRET, INBOUND_KEY):
            assert secret not in output
    finally:
        if proc.process.returncode is None:
            proc.process.kill()
            await proc.process.wait()


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (-1, "must be between 0 and 86400, got -1"),
        ("soon", 'must be a number, got "soon"'),
        (True, "must be a number, got True"),
    ],
)
def test_reload_interval_is_validated(
    sim: GiniSimulator, tmp_path: Path, value: object, problem: str
) -> None:
    data = merge(config_data(sim, tmp_path), {"reload_interval_seconds": value})
    with pytest.raises(ConfigError) as caught:
        build_config(data, {}, tmp_path)
    assert caught.value.problems == [f"reload_interval_seconds: {problem}"]


def test_reload_interval_defaults_to_30_and_0_means_sighup_only(
    sim: GiniSimulator, tmp_path: Path
) -> None:
    assert build_config(config_data(sim, tmp_path), {}, tmp_path).reload_interval_seconds == 30
    data = merge(config_data(sim, tmp_path), {"reload_interval_seconds": 0})
    assert build_config(data, {}, tmp_path).reload_interval_seconds == 0


_KEY_TEXT = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=MIN_INBOUND_KEY_BYTES
).filter(lambda key: not key.startswith("#"))
_LINE = st.one_of(_KEY_TEXT, st.just(""), st.just("   "), st.just("# a comment"))


@given(lines=st.lists(_LINE, min_size=1, max_size=8), newline=st.sampled_from(["\n", "\r\n"]))
def test_a_reloaded_key_file_reads_as_it_does_at_startup(lines: list[str], newline: str) -> None:
    text = newline.join(lines) + newline
    expected = [line for line in lines if line.strip() and not line.startswith("#")]
    with tempfile.TemporaryDirectory() as folder:
        # The reloader's own source, registered for a proxy that started with a valid file.
        key_file = Path(folder) / "keys"
        key_file.write_text(OTHER_KEY)
        data: dict[str, Any] = {"inbound_auth": {"keys": {"file": str(key_file)}}}
        data |= {"client": {"id": "c", "secret": "s"}, "identity": {"hmac_key": HMAC_KEY}}
        load = Services(build_config(data, {}, Path("/"))).reloader.sources["inbound_auth.keys"]
        # The same file at startup: an inline value would go through `${VAR}`/`$$` expansion,
        # which a key file never does (a key may well contain `$$`).
        key_file.write_bytes(text.encode())
        try:
            at_startup = build_config(data, {}, Path("/"))
        except ConfigError:
            with pytest.raises(InvalidSecret):  # refused at startup: refused on reload
                load.load((text.encode(),))
            return
        reloaded = load.load((text.encode(),))
    keys = (at_startup.inbound_auth or _never()).keys
    assert expected  # a file with no key is refused
    named = [":" in line and CALLER_NAME.fullmatch(line.partition(":")[0]) for line in expected]
    assert [key.caller is not None for key in keys] == [bool(n) for n in named]
    assert reloaded == tuple((key.encode(), key.caller) for key in keys)


def _never() -> Any:
    raise AssertionError("inbound_auth missing")


# --- the shape of the reload wiring --------------------------------------------------------


def test_reloading_is_small_and_hands_values_to_few_owners() -> None:
    """Issue 21: the wiring stays readable. At most 200 lines and 4 `proxy` dependencies
    (`proxy.config` counts once, each other package or root module once), so a new secret is a
    new owner method, not another subsystem reached into."""
    path = Path(__file__).resolve().parents[1] / "proxy" / "reloading.py"
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") <= 200
    imported = set()
    for node in ast.walk(ast.parse(text)):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        imported |= {".".join(name.split(".")[:2]) for name in names if name.startswith("proxy.")}
    assert len(imported) <= 4, sorted(imported)
    for reached_into in ("GuardedStore", ".inner", "PostgresStore", '"file:', ".basic =",
                         "proxy_headers ="):  # fmt: skip
        assert reached_into not in text
