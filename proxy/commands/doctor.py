"""`gini-auth-proxy doctor`: can this pod reach Gini the way the config says? Step by step.

Each step says what it checked and, when it fails, what to change. Nothing about any user is
sent: the credential check is the probe a reloaded client secret is verified with
(`Credentials.probe`): a client-credentials grant at the User Center when flow 4 is configured,
else a `/login` for the fixed identifier `PROBE_IDENTIFIER`.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from proxy.config import Config
from proxy.credentials import PROBE_IDENTIFIER, Credentials
from proxy.errors import ProxyError
from proxy.metrics import Metrics
from proxy.transport.tls import build_context
from proxy.upstream import PAY_API, USER_CENTER, Upstream

__all__ = ["PROBE_IDENTIFIER", "Doctor", "doctor"]
MAX_CLOCK_SKEW_SECONDS = 30
CERT_WARN_DAYS = 14


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    ok: bool | None  # None: skipped because an earlier step failed
    detail: str

    def line(self) -> str:
        mark = {True: " ok ", False: "FAIL", None: "skip"}[self.ok]
        return f"[{mark}] {self.name:<22} {self.detail}"


class Doctor:
    """Runs the checks in order; `steps` holds the results, `ok` whether all passed."""

    def __init__(self, config: Config, report: Callable[[str], None] = print):
        self.config = config
        self.report = report
        self.steps: list[Step] = []
        self.timeout = config.upstream.connect_timeout_seconds
        self.egress = config.upstream.egress_proxy
        self.held = Credentials(config)  # what the proxy would present
        self.context = build_context(config.upstream.tls)
        self.reachable: dict[str, bool] = {}

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps)

    def add(self, name: str, ok: bool | None, detail: str) -> None:
        step = Step(name, ok, detail)
        self.steps.append(step)
        self.report(step.line())

    async def run(self) -> bool:
        upstream = self.config.upstream
        via = f"via egress proxy {self.egress.url}" if self.egress else "direct"
        self.add("config", True, f"valid; calls to Gini go {via}")
        if self.egress is not None:
            await self.dns("dns egress proxy", self.egress.host, self.egress.port)
        for name, url in ((PAY_API, upstream.pay_api), (USER_CENTER, upstream.user_center)):
            self.reachable[name] = await self.origin(name, url)
        await self.credentials()
        await self.store()
        await self.fleet()
        failed = sum(1 for step in self.steps if step.ok is False)
        self.report("all checks passed" if self.ok else f"{failed} check(s) failed")
        return self.ok

    async def dns(self, name: str, host: str, port: int) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                infos = await asyncio.get_running_loop().getaddrinfo(host, port)
        except (OSError, TimeoutError) as exc:
            self.add(name, False, f"{host} does not resolve ({_why(exc)})")
            return False
        addresses = sorted({str(info[4][0]) for info in infos})
        self.add(name, True, f"{host} -> {', '.join(addresses[:4])}")
        return True

    async def origin(self, name: str, url: str) -> bool:
        """DNS, TCP (or the CONNECT tunnel) and the TLS handshake to one upstream."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        if self.egress is None:
            if not await self.dns(f"dns {name}", host, port):
                return False
        else:
            self.add(f"dns {name}", True, f"{host}: resolved by the egress proxy")
        opened = await self.connect(name, host, port)
        if opened is None:
            return False
        reader, writer = opened
        try:
            if not tls:
                self.add(f"tls {name}", True, "plain http: no TLS (only for test setups)")
                return True
            return await self.handshake(name, host, writer)
        finally:
            writer.close()
            del reader

    async def connect(
        self, name: str, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        target = f"{host}:{port}"
        step = f"tcp {name}"
        try:
            async with asyncio.timeout(self.timeout):
                if self.egress is None:
                    opened = await asyncio.open_connection(host, port)
                    self.add(step, True, f"connected to {target}")
                    return opened
                reader, writer = await asyncio.open_connection(self.egress.host, self.egress.port)
                status = await self.tunnel(reader, writer, target)
        except (OSError, TimeoutError) as exc:
            where = f"egress proxy {self.egress.url}" if self.egress else target
            self.add(step, False, f"cannot connect to {where} ({_why(exc)})")
            return None
        if status == 200:
            self.add(step, True, f"CONNECT {target} through {self.egress.url}")
            return reader, writer
        writer.close()
        if status == 407:
            why = "refused the proxy credentials (407): check upstream.egress_proxy"
        else:
            why = f"refused CONNECT {target} (status {status}): is the host allowed?"
        self.add(step, False, f"egress proxy {why}")
        return None

    async def tunnel(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str
    ) -> int:
        """Send CONNECT with the configured credentials; the proxy's status code."""
        assert self.egress is not None
        head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
        for name, value in (self.held.proxy_headers or {}).items():
            head += f"{name}: {value}\r\n"
        writer.write((head + "\r\n").encode("latin-1"))
        await writer.drain()
        answer = await reader.readuntil(b"\r\n\r\n")
        try:
            return int(answer.split(b" ", 2)[1])
        except (IndexError, ValueError):
            return 0

    async def handshake(self, name: str, host: str, writer: asyncio.StreamWriter) -> bool:
        step = f"tls {name}"
        try:
            async with asyncio.timeout(self.timeout):
                await writer.start_tls(self.context, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            hint = "hostname mismatch" if exc.verify_code in (62, 64) else "not trusted"
            self.add(
                step,
                False,
                f"certificate {hint}: {exc.verify_message}; "
                "a private or intercepting CA goes in upstream.tls.ca_file",
            )
            return False
        except (OSError, TimeoutError) as exc:
            self.add(step, False, f"handshake failed ({_why(exc)}); client certificate required?")
            return False
        ssl_object = writer.get_extra_info("ssl_object")
        cert = ssl_object.getpeercert() if ssl_object is not None else None
        if not cert:
            self.add(step, True, "handshake ok")
            return True
        issuer = _name(cert.get("issuer", ()))
        expires = ssl.cert_time_to_seconds(str(cert["notAfter"]))
        until = datetime.datetime.fromtimestamp(expires, datetime.UTC)
        days = int((expires - datetime.datetime.now(datetime.UTC).timestamp()) // 86400)
        version = ssl_object.version() if ssl_object is not None else "?"
        detail = f"{version}, issuer {issuer}, expires {until:%Y-%m-%d} ({days} days left)"
        if days < CERT_WARN_DAYS:
            detail += " - expires soon"
        self.add(step, True, detail)
        return True

    async def credentials(self) -> None:
        """Client credentials accepted, and Gini's clock against ours (from its Date header)."""
        config = self.config
        probe = self.held.probe()
        upstream_name, what = (USER_CENTER if probe.user_center else PAY_API), probe.what
        if not self.reachable.get(upstream_name):
            self.add("client credentials", None, f"needs a working connection to {upstream_name}")
            self.add("clock skew", None, f"needs a working connection to {upstream_name}")
            return
        upstream = Upstream(config.upstream, Metrics(), self.held)
        await upstream.start()
        try:
            async with upstream.call(
                upstream_name,
                probe.method,
                probe.url,
                headers=probe.headers,
                deadline=config.upstream.timeout_seconds,
                quiet=True,
            ) as call:
                status, date = call.response.status, call.response.headers.get("Date")
                await call.response.read()  # the token is read and dropped, never shown
        except ProxyError as exc:
            self.add("client credentials", False, f"{what}: {exc.detail}")
            self.add("clock skew", None, "no answer from Gini")
            return
        finally:
            await upstream.close()
        if status == 200:
            self.add("client credentials", True, f"accepted ({what})")
        elif status in (400, 401, 403):
            self.add("client credentials", False, f"refused with {status} ({what}): check client")
        else:
            self.add("client credentials", False, f"unexpected status {status} ({what})")
        self.clock_skew(date)

    def clock_skew(self, date: str | None) -> None:
        if date is None:
            self.add("clock skew", None, "Gini sent no Date header")
            return
        try:
            theirs = email.utils.parsedate_to_datetime(date)
        except (TypeError, ValueError):
            self.add("clock skew", None, f"unreadable Date header {date!r}")
            return
        skew = (datetime.datetime.now(datetime.UTC) - theirs).total_seconds()
        ok = abs(skew) <= MAX_CLOCK_SKEW_SECONDS
        advice = "" if ok else f" (more than {MAX_CLOCK_SKEW_SECONDS} s: check NTP on the node)"
        self.add("clock skew", ok, f"{skew:+.0f} s against Gini's Date header{advice}")

    async def store(self) -> None:
        if self.config.store is None:
            self.add("store", True, "none configured (flows 1-3 only)")
            return
        from proxy.vending.stores import StoreOpenError, make_store  # noqa: PLC0415 - loads a driver

        store = make_store(self.config.store)
        try:
            async with asyncio.timeout(max(self.timeout, 10)):
                await store.open()  # also checks store.encryption_key against the stored data
                await store.ping()
                users = await store.count()
        except (StoreOpenError, ProxyError, OSError, TimeoutError) as exc:
            self.add("store", False, _why(exc))
        else:
            self.add("store", True, f"reachable, encryption key accepted, {users} user(s)")
        finally:
            await store.close()

    async def fleet(self) -> None:
        """The fleet's Redis: reachable, authenticated, answering within the call timeout."""
        fleet = self.config.fleet
        if fleet is None:
            return
        from proxy.vending.fleet.remote import make_client, password_holder  # noqa: PLC0415

        client = make_client(fleet, password_holder(fleet))
        kind = "cluster" if fleet.cluster else "single node"
        try:
            async with asyncio.timeout(max(self.timeout, 5)):
                started = asyncio.get_running_loop().time()
                await client.ping()
                took = (asyncio.get_running_loop().time() - started) * 1000
        except Exception as exc:  # noqa: BLE001 - any failure is the finding
            # The class name only: a driver message may quote the URL, which may hold a password.
            self.add("fleet", False, f"Redis ({kind}) unreachable: {type(exc).__name__}")
        else:
            slow = took > fleet.call_timeout_seconds * 1000
            detail = f"Redis ({kind}) answered in {took:.0f} ms"
            if slow:
                detail += f", over call_timeout_seconds ({fleet.call_timeout_seconds:g} s)"
            self.add("fleet", not slow, detail)
        finally:
            await client.aclose()


def _name(rdns: object) -> str:
    parts = {k: v for rdn in rdns for k, v in rdn} if isinstance(rdns, tuple) else {}
    return str(parts.get("organizationName") or parts.get("commonName") or "?")


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ProxyError):
        return exc.message
    return str(exc) or type(exc).__name__


def doctor(config: Config) -> bool:
    """`gini-auth-proxy doctor`: True when every check passed."""
    return asyncio.run(Doctor(config).run())
