"""Small HTTP tool services on loopback that demand a credential, and a logging egress
proxy for external tools. They record what they saw as hashes, never the tokens."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import List, Optional


def token_hash(token: bytes) -> str:
    return hashlib.sha256(token).hexdigest()


@dataclass(frozen=True)
class Seen:
    """One request a tool received: when, whether it was allowed, the token's hash."""

    at: float
    authorized: bool
    token_sha256: Optional[str]


class _Server:
    def __init__(self, handler):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class ToolService(_Server):
    """POST / with ``Authorization: Bearer <key>``; answers 200 with a JSON echo, or 401."""

    def __init__(self, name: str, expected_key: bytes):
        self.name = name
        self.seen: List[Seen] = []
        self._lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                auth = self.headers.get("Authorization", "")
                token = auth[7:].encode() if auth.startswith("Bearer ") else None
                ok = token is not None and hmac.compare_digest(token, expected_key)
                with service._lock:
                    service.seen.append(Seen(time.time(), ok, token and token_hash(token)))
                status, reply = (200, {"tool": name, "echo": json.loads(body or b"{}")}) if ok \
                    else (401, {"error": "bad credential"})
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # the default logs to stderr; say nothing
                pass

        super().__init__(Handler)


class EgressProxy(_Server):
    """A forward HTTP proxy that logs method, host and status of each external call."""

    def __init__(self):
        self.log: List[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fwd = urllib.request.Request(self.path, data=body, method="POST")
                for k in ("Authorization", "Content-Type"):
                    if self.headers.get(k):
                        fwd.add_unredirected_header(k, self.headers[k])
                direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                try:
                    with direct.open(fwd, timeout=5) as r:
                        status, data = r.status, r.read()
                except urllib.error.HTTPError as e:
                    status, data = e.code, e.read()
                proxy.log.append(f"POST {urllib.parse.urlsplit(self.path).netloc} {status}")
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        super().__init__(Handler)
