"""The TLS upstream of the bench: nginx serving GET /documents over HTTPS with a CA made for the
run, and the count of TLS connections it accepted (each one is one handshake).

nginx's stub_status listens on a separate plain-HTTP port; its `accepts` counter covers both
listeners, so each read of it adds one connection, which `accepted_between` subtracts.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from pathlib import Path

import trustme

from .procs import Processes, free_port, wait_http
from .servers import Server
from .upstream import DOCUMENTS

NGINX_TLS_CONF = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  ssl_session_cache off;
  ssl_session_tickets off;
  server {{
    listen 127.0.0.1:{port} ssl backlog=1024;
    ssl_certificate {tmp}/server.pem;
    ssl_certificate_key {tmp}/server.key;
    location = /documents {{
      default_type application/json;
      return 200 '{body}';
    }}
  }}
  server {{
    listen 127.0.0.1:{status_port};
    location = /stub {{ stub_status; }}
  }}
}}
"""


@dataclass
class TlsUpstream:
    server: Server
    ca_file: Path
    status_url: str

    def accepted(self) -> int:
        """nginx's accepted-connections counter (this read included)."""
        with urllib.request.urlopen(self.status_url, timeout=5) as answer:  # noqa: S310 - loopback
            text: str = answer.read().decode()
        # "Active connections: N\nserver accepts handled requests\n A H R\n..."
        return int(text.splitlines()[2].split()[0])

    def accepted_between(self, before: int, after: int) -> int:
        return after - before - 1  # the read that produced `after`


def start_nginx_tls(procs: Processes, nginx: str, tmp: Path) -> TlsUpstream:
    """nginx answering GET /documents over TLS (no session resumption: every connection does
    a full handshake), with a certificate for 127.0.0.1 from a CA made here."""
    folder = tmp / "nginx-tls"
    folder.mkdir(mode=0o755, exist_ok=True)
    ca = trustme.CA()
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    leaf = ca.issue_cert("127.0.0.1")
    leaf.private_key_pem.write_to_path(str(folder / "server.key"))
    (folder / "server.pem").write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    (folder / "server.key").chmod(0o644)  # nginx's master reads it as root; workers do not
    port, status_port = free_port(), free_port()
    conf = folder / "nginx.conf"
    conf.write_text(
        NGINX_TLS_CONF.format(
            tmp=folder, port=port, status_port=status_port, body=DOCUMENTS.decode()
        )
    )
    proc = procs.start(
        "upstream (nginx, TLS)",
        [nginx, "-p", str(folder), "-c", str(conf), "-e", str(folder / "nginx-error.log")],
        stderr=(folder / "nginx.stderr").open("wb"),
    )
    status_url = f"http://127.0.0.1:{status_port}/stub"
    wait_http(status_url, proc, "nginx (TLS)")
    server = Server("upstream (nginx, TLS)", proc, f"https://127.0.0.1:{port}")
    return TlsUpstream(server, ca_file, status_url)
