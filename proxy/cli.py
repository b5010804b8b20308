"""Command line: `serve`, `demo`, `check-config`, `hash-user`, `doctor`, `rotate-store-key`.

The one place where exceptions become exit codes (`proxy.exitcodes`): commands raise
ConfigError or StartupError and return OK or FORCED themselves."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from proxy import __version__, exitcodes
from proxy.config import Config, ConfigError, config_path, load_config
from proxy.errors import ProxyError, StartupError
from proxy.identity import derive_identifier, identity_key_id, validate_user_id


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gini-auth-proxy",
        description="Authenticating reverse proxy and token vendor for the Gini Pay API.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = "config file (default: $GINI_PROXY_CONFIG, else ./config.yaml)"
    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help=config_help)
    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("--config", help=config_help)
    hash_user = commands.add_parser("hash-user", help="print the X-User-Identifier for a user id")
    hash_user.add_argument("user_id", metavar="ID", nargs="?")
    hash_user.add_argument(
        "--key-id", action="store_true", help="print the identity key id instead (no ID)"
    )
    hash_user.add_argument("--config", help=config_help)
    doctor = commands.add_parser(
        "doctor", help="check DNS, TCP, TLS, credentials, clock and store from here, step by step"
    )
    doctor.add_argument("--config", help=config_help)
    rotate = commands.add_parser(
        "rotate-store-key", help="re-encrypt every stored credential with store.encryption_key"
    )
    rotate.add_argument("--config", help=config_help)
    demo = commands.add_parser("demo", help="run the proxy against a built-in Gini simulator")
    demo.add_argument("--port", type=int, default=8080, help="proxy port (default 8080)")
    demo.add_argument("--admin-port", type=int, default=9090, help="admin port (default 9090)")
    return parser


def _load(path_arg: str | None) -> Config:
    return load_config(config_path(path_arg))


def _doctor(path_arg: str | None) -> int:
    """Exit 0 when every check passed, 1 otherwise (an invalid config is a failed check)."""
    from proxy.commands.doctor import doctor  # noqa: PLC0415 - keeps check-config fast and light

    print(f"gini-auth-proxy doctor: {config_path(path_arg)}")
    try:
        config = _load(path_arg)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"[FAIL] config                 {problem}")
        return exitcodes.CHECK_FAILED
    return exitcodes.OK if doctor(config) else exitcodes.CHECK_FAILED


def _hash_user(args: argparse.Namespace) -> int:
    """`hash-user ID` prints the X-User-Identifier; `hash-user --key-id` the identity key id."""
    if args.key_id == (args.user_id is not None):
        print("error: give either an ID or --key-id", file=sys.stderr)
        return exitcodes.CONFIG
    config = _load(args.config)
    if args.key_id:
        print(identity_key_id(config.identity.hmac_key.encode()))
        return exitcodes.OK
    try:
        user_id = validate_user_id(args.user_id)
    except ProxyError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exitcodes.CONFIG
    print(derive_identifier(config.identity.hmac_key.encode(), user_id))
    return exitcodes.OK


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911 - one exit per command
    """Entry point of the `gini-auth-proxy` console script and `python -m proxy`."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-config":
            _load(args.config)
            print(f"{config_path(args.config)}: configuration is valid")
            return exitcodes.OK
        if args.command == "hash-user":
            return _hash_user(args)
        if args.command == "doctor":
            return _doctor(args.config)
        if args.command == "serve":
            from proxy.server import serve  # noqa: PLC0415 - keeps check-config fast and light

            return serve(_load(args.config))
        if args.command == "rotate-store-key":
            from proxy.commands.rotate_key import rotate_store_key  # noqa: PLC0415

            rotate_store_key(_load(args.config))
            return exitcodes.OK
        from proxy.commands.demo import demo  # noqa: PLC0415

        return demo(args.port, args.admin_port)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    except StartupError as exc:
        if args.command == "serve":  # logging is set up: one JSON line, no traceback
            logging.getLogger("proxy.server").error("startup failed: %s", exc)  # noqa: TRY400
        else:
            print(f"error: {exc}", file=sys.stderr)
        return exitcodes.STARTUP
