"""``python -m proxy.sandbox``: run the Gini simulator by hand until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path

from proxy.sandbox.jwt_auth import JwtSettings
from proxy.sandbox.server import GiniSimulator
from proxy.sandbox.tls import SandboxTlsError, server_context


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m proxy.sandbox",
        description="Run the local Gini simulator (Pay API + User Center).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default loopback)")
    parser.add_argument("--port-pay", type=int, default=0, help="Pay API port (0 = any free)")
    parser.add_argument("--port-uc", type=int, default=0, help="User Center port (0 = any free)")
    parser.add_argument("--client-id", default="sim-client", help="the client id it accepts")
    parser.add_argument(
        "--client-secret", default="sim-secret", help="that client's secret (default sim-secret)"
    )
    parser.add_argument("--token-lifetime", type=int, default=3599, help="user tokens, seconds")
    parser.add_argument(
        "--jwks-url",
        help="accept X-JWT-Authorization on the Pay API, verified against this JWK set "
        "(e.g. http://127.0.0.1:9090/.well-known/jwks.json); needs --jwt-issuer",
    )
    parser.add_argument("--jwt-issuer", help="the iss claim JWTs must carry")
    parser.add_argument(
        "--tls-cert", type=Path, metavar="FILE",
        help="serve HTTPS with this PEM certificate (chain); needs --tls-key",
    )  # fmt: skip
    parser.add_argument("--tls-key", type=Path, metavar="FILE", help="its unencrypted PEM key")
    parser.add_argument(
        "--client-ca", type=Path, metavar="FILE",
        help="require client certificates issued by this CA (PEM), as Gini's mTLS does; "
        "needs --tls-cert",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.client_ca is not None and args.tls_cert is None:
        parser.error("--client-ca needs --tls-cert and --tls-key (client certificates need TLS)")
    try:
        args.ssl_context = (
            server_context(args.tls_cert, args.tls_key, args.client_ca) if args.tls_cert else None
        )
    except SandboxTlsError as exc:
        parser.error(str(exc))
    return args


async def _serve(args: argparse.Namespace) -> None:
    simulator = GiniSimulator(
        client_id=args.client_id,
        client_secret=args.client_secret,
        token_lifetime=args.token_lifetime,
        host=args.host,
        pay_api_port=args.port_pay,
        user_center_port=args.port_uc,
        ssl_context=args.ssl_context,
    )
    if args.jwks_url:
        simulator.enable_jwt(JwtSettings(args.jwks_url, args.jwt_issuer or ""))
    async with simulator:
        print(f"Pay API:       {simulator.pay_api_url}")
        print(f"User Center:   {simulator.user_center_url}")
        print(f"client id:     {simulator.client_id}")
        print(f"client secret: {simulator.client_secret}")
        if args.client_ca is not None:
            print(f"client certificates required, issued by {args.client_ca}")
        print("Sandbox-only routes live under /_sandbox/ on the Pay API. Ctrl-C stops.", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            # Not available on every platform; Ctrl-C still ends it via KeyboardInterrupt.
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, stop.set)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m proxy.sandbox``."""
    args = _parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
