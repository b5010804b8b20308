"""Command line: `init`, `serve`, `demo`, `check-config`, `hash-user`, `doctor`,
`rotate-store-key`.

The one place where exceptions become exit codes (`proxy.exitcodes`): commands raise
ConfigError or StartupError and return OK or FORCED themselves."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from proxy import __version__, exitcodes
from proxy.commands.init import DEFAULT_DIR, DEFAULT_PAY_API, DEFAULT_USER_CENTER
from proxy.config import Config, ConfigError, config_path, load_config
from proxy.errors import ProxyError, StartupError
from proxy.identity import derive_identifier, identity_key_id, validate_user_id

_CONFIG_HELP = "config file (default: $GINI_PROXY_CONFIG, else ./config.yaml)"
# (name, one-line description, example lines): `--help` of each command shows all three.
_COMMANDS = (
    ("init", "write a starter config and freshly generated keys into a folder",
     "gini-auth-proxy init ./gini-proxy --pay-api https://pay-api.gini.net"),
    ("check-config", "validate a config file and exit (0, or 2 listing every problem)",
     "gini-auth-proxy check-config --config gini-proxy/config.yaml"),
    ("doctor", "check DNS, TCP, TLS, credentials, clock and store from here, step by step",
     "gini-auth-proxy doctor --config gini-proxy/config.yaml"),
    ("serve", "run the proxy until SIGTERM, then drain",
     "gini-auth-proxy serve --config gini-proxy/config.yaml"),
    ("hash-user", "print the X-User-Identifier Gini sees for a user id",
     "gini-auth-proxy hash-user alice --config gini-proxy/config.yaml\n"
     "  gini-auth-proxy hash-user --key-id --config gini-proxy/config.yaml"),
    ("rotate-store-key", "re-encrypt every stored credential with store.encryption_key",
     "gini-auth-proxy rotate-store-key --config gini-proxy/config.yaml"),
    ("demo", "run the proxy against a built-in Gini simulator (no credentials needed)",
     "gini-auth-proxy demo --port 8180 --admin-port 9190"),
)  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gini-auth-proxy",
        description="Authenticating reverse proxy and token vendor for the Gini Pay API.",
        epilog="Start with `gini-auth-proxy init`, or try `gini-auth-proxy demo`. "
        "`gini-auth-proxy COMMAND --help` describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub = {
        name: commands.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        for name, summary, example in _COMMANDS
    }
    for name in ("check-config", "doctor", "serve", "hash-user", "rotate-store-key"):
        sub[name].add_argument("--config", metavar="FILE", help=_CONFIG_HELP)
    init = sub["init"]
    init.add_argument(
        "folder", metavar="DIR", nargs="?", default=DEFAULT_DIR,
        help=f"folder to write config.yaml, secrets/ and data/ into (default ./{DEFAULT_DIR})",
    )  # fmt: skip
    init.add_argument(
        "--pay-api", metavar="URL", default=DEFAULT_PAY_API,
        help=f"Gini Pay API base URL (default {DEFAULT_PAY_API})",
    )  # fmt: skip
    init.add_argument(
        "--user-center", metavar="URL", default=DEFAULT_USER_CENTER,
        help=f"Gini User Center base URL (default {DEFAULT_USER_CENTER})",
    )  # fmt: skip
    init.add_argument(
        "--force", action="store_true",
        help="replace existing files, keys included (a new hmac-key changes every identifier)",
    )  # fmt: skip
    hash_user = sub["hash-user"]
    hash_user.add_argument(
        "user_id", metavar="ID", nargs="?",
        help="the internal user id, as your services send it in identity.header",
    )  # fmt: skip
    hash_user.add_argument(
        "--key-id", action="store_true", help="print the identity key id instead (no ID)"
    )
    demo = sub["demo"]
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
        if args.command == "init":
            from proxy.commands.init import init  # noqa: PLC0415

            return init(args.folder, args.pay_api, args.user_center, force=args.force)
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
