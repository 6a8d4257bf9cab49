"""A git smart-HTTP server on 127.0.0.1 that demands HTTP Basic auth, for credential tests.

forgecrew hands git its forge token only through a credential helper reading an inherited
memfd (common.gitsafe). A file:// remote never asks for a credential, so only a real HTTP
server that answers 401 until git sends `x-access-token:<token>` proves the helper works. The
git side is the real thing: each request runs `git http-backend` as a CGI, as a web server would.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

USERNAME = "x-access-token"


@dataclass(frozen=True)
class GitRequest:
    """One request as the server received it."""

    method: str
    path: str  # with the query string
    auth_present: bool
    auth_valid: bool
    status: int
    chunked: bool = False  # the body came with Transfer-Encoding: chunked


class FakeGitHTTP:
    """Serves the bare repositories under `root` at `url`/<path relative to root>."""

    def __init__(self, root: Path, *, git: str | None = None,
                 on_request: Callable[[GitRequest], None] | None = None) -> None:
        self.root = Path(root).absolute()
        self.tokens: set[str] = set()
        self.requests: list[GitRequest] = []
        self.on_request = on_request  # called while the client waits for the answer
        self._git = git or shutil.which("git") or "git"  # resolved now: tests may put a wrapper on PATH later
        self._path = os.environ.get("PATH", "/usr/bin:/bin")
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def add_token(self, token: str) -> None:
        self.tokens.add(token)

    @property
    def url(self) -> str:
        assert self._server is not None, "FakeGitHTTP is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeGitHTTP:
        self.root.mkdir(parents=True, exist_ok=True)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                         name="fake-git-http", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeGitHTTP:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def check_auth(self, header: str | None) -> tuple[bool, bool]:
        """(present, valid) for an Authorization header."""
        if not header or not header.startswith("Basic "):
            return False, False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except ValueError:
            return True, False
        return True, user == USERNAME and password in self.tokens

    def run_cgi(self, method: str, path: str, query: str, headers: Any,
                body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """Run `git http-backend` for one request; (status, headers, body) from its CGI output."""
        env = {
            "PATH": self._path, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.receivepack", "GIT_CONFIG_VALUE_0": "true",
            "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
            "CONTENT_TYPE": headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": USERNAME, "REMOTE_ADDR": "127.0.0.1",
            "GIT_PROTOCOL": headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": headers.get("Content-Encoding", ""),
        }
        done = subprocess.run([self._git, "http-backend"], input=body, env=env, capture_output=True, timeout=60)
        raw = done.stdout
        ends = [(i, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (i := raw.find(sep)) >= 0]
        if done.returncode != 0 and not ends:
            return 500, [("Content-Type", "text/plain")], done.stderr
        cut, size = min(ends) if ends else (len(raw), 0)
        status, out_headers = 200, []
        for line in raw[:cut].decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                out_headers.append((name, value.strip()))
        return status, out_headers, raw[cut + size:]


def _handler_for(fake: FakeGitHTTP) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # also answers curl's Expect: 100-continue

        def do_GET(self) -> None:
            body = self._read_body()
            present, valid = fake.check_auth(self.headers.get("Authorization"))
            path, _, query = self.path.partition("?")
            if valid:
                status, headers, out = fake.run_cgi(self.command, path, query, self.headers, body)
            else:
                status, headers, out = 401, [("WWW-Authenticate", 'Basic realm="fake"'),
                                              ("Content-Type", "text/plain")], b"authentication required\n"
            chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
            request = GitRequest(self.command, self.path, present, valid, status, chunked)
            with fake._lock:
                fake.requests.append(request)
            if fake.on_request is not None:
                fake.on_request(request)
            self.send_response(status)
            for name, value in headers:
                if name.lower() not in ("content-length", "transfer-encoding"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_POST = do_GET

        def _read_body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()  # the CRLF after each chunk
                while self.rfile.readline().strip():  # trailers up to the blank line
                    pass
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
