"""A fault-injecting HTTP proxy in front of the moto S3 server (127.0.0.1 only).

Clients are pointed at the proxy (``AWS_ENDPOINT_URL``); each request is
forwarded to moto unless a rule matches it: a rule names the HTTP methods and
a path pattern it applies to, what it does (``"503"``: an S3 ``SlowDown``
answer; ``"500"``: ``InternalError``; ``"drop"``: the connection is closed
before any answer, after the request was read; ``"drop-forwarded"``: the
request reaches moto, then the connection is closed before its answer
reaches the client; ``"pass"``: forwarded, e.g. after its ``hook`` ran) and how often (every ``every``-th matching request, at
most ``times`` times). The proxy counts what it did, for the test to assert.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_ERRORS = {"503": (503, "SlowDown", "Please reduce your request rate."),
           "500": (500, "InternalError", "We encountered an internal error. Please try again.")}


@dataclass
class Rule:
    action: str                      # "503" | "500" | "drop" | "drop-forwarded"
    methods: tuple = ("GET", "PUT", "POST", "HEAD", "DELETE")
    path: str = ".*"                 # regex on the request path (with query)
    every: int = 1
    times: int = 10 ** 9
    hook: object = None              # called (no arguments) when the rule fires, before the action
    seen: int = 0
    fired: int = 0

    def hit(self, method: str, path: str) -> bool:
        if method not in self.methods or not re.search(self.path, path) or self.fired >= self.times:
            return False
        self.seen += 1
        if self.seen % self.every:
            return False
        self.fired += 1
        return True


@dataclass
class FaultProxy:
    upstream: tuple[str, int]
    rules: list[Rule] = field(default_factory=list)
    log: list = field(default_factory=list)

    def start(self) -> str:
        proxy = self
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                with lock:
                    rule = next((r for r in proxy.rules if r.hit(self.command, self.path)), None)
                    proxy.log.append((self.command, self.path, rule.action if rule else None))
                if rule is not None and rule.hook is not None:
                    rule.hook()
                if rule is not None and rule.action in _ERRORS:
                    status, code, msg = _ERRORS[rule.action]
                    xml = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{msg}"
                           f"</Message></Error>").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    self.wfile.write(xml)
                    return
                if rule is not None and rule.action == "drop":
                    self._drop()
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if rule is not None and rule.action == "drop-forwarded":
                    self._drop()
                    return
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                # a HEAD answer carries the object's length, not its own
                self.send_header("Content-Length", resp.getheader("Content-Length", "0") if self.command == "HEAD"
                                 else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _drop(self):
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fired(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, _, a in self.log:
            if a:
                out[a] = out.get(a, 0) + 1
        return out
