"""`gini-auth-proxy demo`: the proxy in front of the built-in Gini simulator, no credentials."""

from __future__ import annotations

import base64
import os
import secrets
import sys
import tempfile
from pathlib import Path

from proxy.app import Services
from proxy.config import Config, build_config
from proxy.errors import StartupError
from proxy.log import Redactor, configure_logging
from proxy.sandbox import GiniSimulator
from proxy.server import run, run_async

DEMO_CLIENT_ID = "demo-client"


def demo_config(sim: GiniSimulator, port: int, admin_port: int, folder: Path) -> Config:
    """A complete config for the demo: loopback only, generated keys, a throwaway store."""
    data = {
        "listen": f"127.0.0.1:{port}",
        "admin_listen": f"127.0.0.1:{admin_port}",
        "public_url": f"http://127.0.0.1:{port}",
        "upstream": {"pay_api": sim.pay_api_url, "user_center": sim.user_center_url},
        "client": {"id": sim.client_id, "secret": sim.client_secret},
        "identity": {"hmac_key": secrets.token_hex(32)},
        "anonymous": {"email_domain": "demo.example.com"},
        "store": {
            "url": f"sqlite:///{folder}/store.db",
            "encryption_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        },
        "drain_delay_seconds": 0,  # a human pressing Ctrl-C wants it to stop now
        "shutdown_grace_seconds": 5,
    }
    return build_config(data, os.environ, folder)


def banner(config: Config, sim: GiniSimulator) -> str:
    """Ready-to-paste commands for the four flows against this demo."""
    p = config.public_url
    a = f"http://{config.admin_listen}"
    return f"""
gini-auth-proxy demo is running (Ctrl-C to stop)
  proxy:            {p}
  admin:            {a}
  Gini simulator:   Pay API {sim.pay_api_url}, User Center {sim.user_center_url}

Flow 1 - a trusted backend calls the Pay API as its user "alice" (no Gini credentials needed):
  curl -si -H 'X-User-Id: alice' -H 'Content-Type: application/pdf' \\
       --data-binary 'hello gini' '{p}/documents?filename=hello.pdf'
  curl -s -H 'X-User-Id: alice' {p}/documents

Flow 2 - a mobile app gets a short-lived token for "alice" through its backend:
  curl -s -X POST -H 'X-User-Id: alice' {p}/_proxy/tokens/derived

Flow 3 - the app uses that token directly at Gini and sees the documents uploaded in flow 1:
  TOKEN=$(curl -s -X POST -H 'X-User-Id: alice' {p}/_proxy/tokens/derived \\
          | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  curl -s -H "Authorization: Bearer $TOKEN" {sim.pay_api_url}/documents

Flow 4 - an anonymous Gini user for "bob" (created once, then reused):
  curl -s -X POST -H 'X-User-Id: bob' {p}/_proxy/tokens/anonymous
  curl -si -X DELETE -H 'X-User-Id: bob' {p}/_proxy/users/anonymous

Operations:
  curl -s {a}/metrics | grep ^gini_proxy_
  curl -s {a}/readyz; curl -s {a}/status
"""


def demo(port: int, admin_port: int) -> int:
    """Run the simulator and the proxy until Ctrl-C; returns the exit code (StartupError: cli)."""

    async def main() -> int:
        with tempfile.TemporaryDirectory(prefix="gini-auth-proxy-demo-") as folder:
            async with GiniSimulator(
                client_id=DEMO_CLIENT_ID, client_secret=secrets.token_urlsafe(24)
            ) as sim:
                config = demo_config(sim, port, admin_port, Path(folder))
                configure_logging("info", Redactor(config.secrets()), sys.stderr, fmt="text")
                try:
                    return await run(
                        Services(config), on_ready=lambda: print(banner(config, sim), flush=True)
                    )
                except StartupError as exc:
                    raise StartupError(busy_port_hint(str(exc), port, admin_port)) from None

    return run_async(main)


def busy_port_hint(message: str, port: int, admin_port: int) -> str:
    """A taken port is the demo's most likely failure, and the fix is a flag away."""
    if not message.startswith("cannot listen on"):
        return message

    def other(p: int) -> int:
        return p + 100 if p + 100 <= 65535 else p - 100

    free = f"--port {other(port)} --admin-port {other(admin_port)}"
    return (
        f"{message}. The demo uses --port {port} and --admin-port {admin_port}; choose free "
        f"ones, e.g. `./scripts/demo {free}` (or `gini-auth-proxy demo {free}`)"
    )
