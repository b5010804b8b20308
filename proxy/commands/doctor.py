"""`gini-auth-proxy doctor`: can this pod reach Gini the way the config says? Step by step.

Each step says what it checked and, when it fails, what to change. Nothing about any user is
sent: the credential check is the probe a reloaded client secret is verified with
(`Credentials.probe`): a client-credentials grant at the User Center when flow 4 is configured,
else a `/login` for the fixed identifier `PROBE_IDENTIFIER`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from proxy.commands import doctor_checks as checks
from proxy.config import Config
from proxy.credentials import PROBE_IDENTIFIER, Credentials
from proxy.errors import ProxyError
from proxy.metrics import Metrics
from proxy.transport.client_cert import ClientCertificateWatch
from proxy.transport.failures import client_certificate_refusal, client_certificate_sentence
from proxy.transport.tls import build_context
from proxy.upstream import PAY_API, USER_CENTER, Upstream

__all__ = ["PROBE_IDENTIFIER", "Doctor", "doctor"]
MAX_CLOCK_SKEW_SECONDS = 30
TLS_CLIENT_CERTIFICATE = "tls_client_certificate"  # the failure reason `serve` logs and counts


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
        # A watch that stays for every origin (serve's retires after the first handshake).
        ClientCertificateWatch(retire=False).install(self.context)
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
        if upstream.tls is not None and upstream.tls.client_cert_file is not None:
            self.add(
                "client certificate", *checks.client_certificate(upstream.tls.client_cert_file)
            )
        if self.egress is not None:
            hint = "check the host in upstream.egress_proxy.url"
            await self.dns("dns egress proxy", self.egress.host, self.egress.port, hint)
        for name, url in ((PAY_API, upstream.pay_api), (USER_CENTER, upstream.user_center)):
            self.reachable[name] = await self.origin(name, url)
        await self.credentials()
        await self.services()
        failed = sum(1 for step in self.steps if step.ok is False)
        self.report("all checks passed" if self.ok else f"{failed} check(s) failed")
        return self.ok

    async def dns(self, name: str, host: str, port: int, dns_hint: str) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                infos = await asyncio.get_running_loop().getaddrinfo(host, port)
        except (OSError, TimeoutError) as exc:
            self.add(name, False, f"{host} does not resolve ({checks.why(exc)}): {dns_hint}.")
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
            hint = f"check the host in upstream.{name} and the pod's DNS"
            if not await self.dns(f"dns {name}", host, port, hint):
                return False
        else:
            self.add(f"dns {name}", True, f"{host}: resolved by the egress proxy")
        opened = await self.connect(name, host, port)
        if opened is None:
            return False
        reader, writer = opened
        try:
            if not tls:
                return await self.plain(name, host, port, writer)
            return await self.handshake(name, host, reader, writer)
        finally:
            writer.close()

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
            self.add(
                step,
                False,
                f"cannot connect to {where} ({checks.why(exc)}): check that the port is right "
                "and that the firewall or network policy lets this pod out.",
            )
            return None
        if status == 200:
            self.add(step, True, f"CONNECT {target} through {self.egress.url}")
            return reader, writer
        writer.close()
        if status == 407:
            why = (
                "refused the proxy credentials (407): check upstream.egress_proxy's "
                "username and password."
            )
        else:
            why = f"refused CONNECT {target} (status {status}): does it allow this host?"
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

    async def plain(self, name: str, host: str, port: int, writer: asyncio.StreamWriter) -> bool:
        """An http:// upstream: does it speak TLS instead? Only a handshake is tried, so no
        request reaches Gini."""
        if await checks.speaks_tls(writer, host, min(self.timeout, 3.0)):
            self.add(
                f"tls {name}", False, f"{host}:{port} speaks TLS: use https:// in upstream.{name}."
            )
            return False
        self.add(f"tls {name}", True, "plain http: no TLS (only for test setups)")
        return True

    async def handshake(
        self, name: str, host: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
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
                "a private or intercepting CA goes in upstream.tls.ca_file.",
            )
            return False
        except (OSError, TimeoutError) as exc:
            refused = client_certificate_refusal(exc, self.context)
            if refused is not None:
                self.add(step, False, f"{TLS_CLIENT_CERTIFICATE}: {refused}")
                return False
            self.add(
                step,
                False,
                f"the TLS handshake failed ({checks.why(exc)}): is this Gini's HTTPS port?",
            )
            return False
        refused = await self.after_handshake(reader, writer)
        if refused is not None:
            self.add(step, False, f"{TLS_CLIENT_CERTIFICATE}: {refused}")
            return False
        self.add(step, True, checks.server_certificate(writer.get_extra_info("ssl_object")))
        return True

    async def after_handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> str | None:
        """Under TLS 1.3 a server that asked for our certificate judges it after the handshake:
        wait until it takes it (a session ticket) or refuses it (an alert, a close)."""
        conn = writer.get_extra_info("ssl_object")
        watch = getattr(self.context, "client_certificate_watch", None)
        if not isinstance(watch, ClientCertificateWatch):
            return None
        try:
            async with asyncio.timeout(self.timeout):
                while watch.waiting(conn):
                    with contextlib.suppress(TimeoutError):
                        if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                            break  # closed: refused
        except (OSError, TimeoutError) as exc:
            if not isinstance(exc, TimeoutError):
                return client_certificate_refusal(exc, self.context)
        if not watch.waiting(conn):
            return None
        asked = watch.take_refusal()
        return client_certificate_sentence(None, asked.sent_certificate if asked else None)

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
            detail = exc.detail.rstrip(".") if exc.detail else exc.message.rstrip(".")
            self.add("client credentials", False, f"{what}: {detail}.")
            self.add("clock skew", None, "no answer from Gini")
            return
        finally:
            await upstream.close()
        if status == 200:
            self.add("client credentials", True, f"accepted ({what})")
        elif status in (400, 401, 403):
            self.add(
                "client credentials",
                False,
                f"Gini refused them with {status} ({what}): check client.id and client.secret.",
            )
        else:
            self.add(
                "client credentials",
                False,
                f"unexpected status {status} ({what}): is Gini having trouble? Try again later.",
            )
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
        advice = "" if ok else f": more than {MAX_CLOCK_SKEW_SECONDS} s, check NTP on the node."
        self.add("clock skew", ok, f"{skew:+.0f} s against Gini's Date header{advice}")

    async def services(self) -> None:
        """The credential store and the response cache's Redis, as `serve` would use them."""
        if self.config.store is None:
            self.add("store", True, "none configured (flows 1-3 only)")
        else:
            self.add("store", *await checks.store(self.config.store, max(self.timeout, 10)))
        cache = self.config.response_cache
        if cache is not None and cache.backend.startswith(("redis://", "rediss://")):
            self.add("response cache", *await checks.redis(cache.backend, self.timeout))
        if self.config.tracing is not None:
            self.add("trace collector", *await checks.collector(self.config.tracing, self.timeout))
        if self.config.fleet is not None:
            self.add("fleet", *await checks.fleet(self.config.fleet, self.timeout))


def doctor(config: Config) -> bool:
    """`gini-auth-proxy doctor`: True when every check passed."""
    return asyncio.run(Doctor(config).run())
