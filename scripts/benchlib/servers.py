"""Starting the servers under test, each in its own process, and knowing when they are ready."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .procs import Processes, child_env, free_port, wait_http
from .upstream import DOCUMENTS

CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-client-secret-0123456789"  # noqa: S105 - a throwaway bench credential
HMAC_KEY = "bench-hmac-key-0123456789abcdef0123456789"

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/nginx-body;
  proxy_temp_path {tmp}/nginx-proxy;
  fastcgi_temp_path {tmp}/nginx-fastcgi;
  uwsgi_temp_path {tmp}/nginx-uwsgi;
  scgi_temp_path {tmp}/nginx-scgi;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  upstream aiohttp_upstream {{ server 127.0.0.1:{aio_port}; keepalive 8; }}
  server {{
    listen 127.0.0.1:{port} backlog=1024;
    location = /documents {{
      default_type application/json;
      return 200 '{body}';
    }}
    location / {{
      proxy_pass http://aiohttp_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_request_buffering off;
      proxy_buffering off;
      client_max_body_size 0;
    }}
  }}
}}
"""


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    url: str  # base URL, no trailing slash
    admin_url: str = ""  # the proxy's admin listener (metrics), none for the other servers

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_helper(
    procs: Processes, root: Path, tmp: Path, name: str, module: str, ready: str, log: str
) -> Server:
    """`python -m benchlib.<module> --port P`, up once `ready` (a path) answers; its stderr
    goes to `<tmp>/<log>.stderr`."""
    port = free_port()
    proc = procs.start(
        name,
        [sys.executable, "-m", f"benchlib.{module}", "--port", str(port)],
        env=child_env(root),
        stderr=(tmp / f"{log}.stderr").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + ready, proc, f"the {name}")
    return Server(name, proc, url)


def start_aiohttp_upstream(procs: Processes, root: Path, tmp: Path) -> Server:
    return start_helper(
        procs, root, tmp, "upstream (aiohttp)", "upstream", "/documents", "upstream"
    )


def start_nginx(procs: Processes, nginx: str, tmp: Path, aio: Server) -> Server:
    """nginx answers GET /documents itself and relays /upload and /download to `aio`."""
    port = free_port()
    body = DOCUMENTS.decode()
    if "'" in body or "$" in body:
        raise RuntimeError("the /documents body cannot be quoted in nginx.conf")
    aio_port = aio.url.rsplit(":", 1)[1]
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, aio_port=aio_port, body=body))
    tmp.chmod(0o755)  # nginx workers drop root; they must reach their temp folders
    proc = procs.start(
        "upstream (nginx)",
        [nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "nginx-error.log")],
        stderr=(tmp / "nginx.stderr").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/documents", proc, "nginx")
    return Server("upstream (nginx)", proc, url)


def start_bare(
    procs: Processes, root: Path, tmp: Path, upstream: str, ca_file: Path | None = None
) -> Server:
    """`bare.py`, the baseline the proxy was first compared with."""
    return _start_baseline(procs, root, tmp, upstream, ca_file, "bare", "bare forwarder")


def start_lean(
    procs: Processes, root: Path, tmp: Path, upstream: str, ca_file: Path | None = None
) -> Server:
    """`lean.py`, the forwarder with every avoidable per-request cost taken out."""
    return _start_baseline(procs, root, tmp, upstream, ca_file, "lean", "lean forwarder")


def _start_baseline(
    procs: Processes,
    root: Path,
    tmp: Path,
    upstream: str,
    ca_file: Path | None,
    module: str,
    name: str,
) -> Server:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        f"benchlib.{module}",
        "--port",
        str(port),
        "--upstream",
        upstream,
        "--client-id",
        CLIENT_ID,
        "--client-secret",
        CLIENT_SECRET,
        "--hmac-key",
        HMAC_KEY,
    ]
    if ca_file is not None:
        argv += ["--ca-file", str(ca_file)]
    tag = module if ca_file is None else f"{module}-tls"
    proc = procs.start(name, argv, env=child_env(root), stderr=(tmp / f"{tag}.stderr").open("wb"))
    url = f"http://127.0.0.1:{port}"
    _wait_for_forwarder(url, proc, f"the {name}")
    return Server(name, proc, url)


def proxy_config(
    port: int,
    admin_port: int,
    upstream: str,
    *,
    access_log: bool,
    cache_backend: str | None,
    ca_file: Path | None = None,
    jwt_key: Path | None = None,
    extra: str = "",
    in_upstream: str = "",
) -> str:
    text = f"""\
listen: "127.0.0.1:{port}"
admin_listen: "127.0.0.1:{admin_port}"
public_url: "http://127.0.0.1:{port}"
upstream:
  pay_api: "{upstream}"
client:
  id: "{CLIENT_ID}"
  secret: "{CLIENT_SECRET}"
identity:
  hmac_key: "{HMAC_KEY}"
drain_delay_seconds: 0
shutdown_grace_seconds: 5
"""
    if ca_file is not None:  # after `pay_api`, still inside `upstream:`
        text = text.replace("\nclient:", f'\n  tls:\n    ca_file: "{ca_file}"\nclient:', 1)
    if in_upstream:  # more keys of `upstream:` (indented by two spaces, one per line)
        text = text.replace("\nclient:", f"\n{in_upstream}client:", 1)
    if not access_log:
        text += "logging:\n  access_log: false\n"
    if jwt_key is not None:  # flow 1 with per-user JWTs (client.auth: jwt)
        text = text.replace('  secret: "', '  auth: "jwt"\n  secret: "', 1)
        text += (
            f'jwt:\n  issuer: "https://bench.invalid"\n  signing_keys: [{{file: "{jwt_key}"}}]\n'
        )
    if cache_backend is not None:
        text += (
            "response_cache:\n"
            '  routes: ["/documents"]\n'
            "  ttl_seconds: 300\n"
            f'  backend: "{cache_backend}"\n'
        )
    return text + extra  # top-level sections of the fleet and tracing sections


def start_proxy(
    procs: Processes,
    root: Path,
    tmp: Path,
    upstream: str,
    *,
    access_log: bool,
    cache_backend: str | None = None,
    tag: str | None = None,
    ca_file: Path | None = None,
    jwt_key: Path | None = None,
    extra: str = "",
    in_upstream: str = "",
) -> Server:
    """The real proxy from its console script; its stdout (the access log) goes to a file.

    `cache_backend` turns on the response cache for `/documents` (TTL 300 s) with that backend;
    `tag` names its config and log files (default: log-on / log-off).
    """
    port, admin_port = free_port(), free_port()
    tag = tag or ("log-on" if access_log else "log-off")
    if (tmp / f"proxy-{tag}.yaml").exists():  # another process of the same side
        tag += f"-{sum(1 for _ in tmp.glob(f'proxy-{tag}*.yaml')) + 1}"
    config = tmp / f"proxy-{tag}.yaml"
    config.write_text(
        proxy_config(
            port,
            admin_port,
            upstream,
            access_log=access_log,
            cache_backend=cache_backend,
            ca_file=ca_file,
            jwt_key=jwt_key,
            extra=extra,
            in_upstream=in_upstream,
        )
    )
    name = f"proxy ({'access log on' if access_log else 'access log off'})"
    if cache_backend is not None:
        kind = cache_backend.split(":", 1)[0]
        name = f"proxy (response cache {kind}, access log {'on' if access_log else 'off'})"
    if jwt_key is not None:
        name = f"proxy (client.auth jwt, access log {'on' if access_log else 'off'})"
    if extra:
        name = f"proxy ({tag})"
    proc = procs.start(
        name,
        [str(root / ".venv" / "bin" / "gini-auth-proxy"), "serve", "--config", str(config)],
        stdout=(tmp / f"proxy-{tag}.stdout").open("wb"),
        stderr=(tmp / f"proxy-{tag}.stderr").open("wb"),
    )
    wait_http(f"http://127.0.0.1:{admin_port}/healthz", proc, name)
    url = f"http://127.0.0.1:{port}"
    _wait_for_forwarder(url, proc, name)
    return Server(name, proc, url, f"http://127.0.0.1:{admin_port}")


def _wait_for_forwarder(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    """A real request through the forwarder must reach the upstream and answer 200."""
    wait_http(url + "/documents", proc, what, headers={"X-User-Id": "bench-user"})
