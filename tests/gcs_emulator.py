"""pytest plugin: a real Google Cloud Storage emulator on loopback, for GCS tests without a cloud.

Registered in ``conftest.py`` (``pytest_plugins = ["gcs_emulator"]``). Fixtures:

* ``gcs_server`` (session): the ``gcp-storage-emulator`` HTTP server (in memory) on a free
  127.0.0.1 port, with ``STORAGE_EMULATOR_HOST`` pointing at it for the whole session, so
  ``google.cloud.storage.Client`` and :mod:`mammo.components.storage` talk to it;
* ``gcs_client`` (session): ``google.cloud.storage.Client(project="test", AnonymousCredentials())``;
* ``gcs_bucket`` (function): a new, empty bucket (unique name) for one test;
* ``flaky_gcs`` (function): a loopback HTTP proxy in front of the emulator that answers the first
  requests with HTTP 503 (a transient error the emulator itself cannot produce) and counts the
  bytes it relays; ``STORAGE_EMULATOR_HOST`` points at the proxy while the test runs.

Helper: :func:`upload_dir` copies a local directory tree into a bucket and returns its ``gs://`` URI.
"""

from __future__ import annotations

import http.client
import itertools
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

_bucket_numbers = itertools.count(1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class GcsServer:
    host: str
    port: int
    server: object = field(repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GcsServer]:
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    try:
        yield GcsServer("127.0.0.1", port, server)
    finally:
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous
        server.stop()


@pytest.fixture(scope="session")
def gcs_client(gcs_server: GcsServer):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project="test", credentials=AnonymousCredentials())


@pytest.fixture
def gcs_bucket(gcs_client) -> str:
    """The name of a fresh bucket."""
    name = f"mammo-test-{next(_bucket_numbers)}"
    gcs_client.create_bucket(name)
    return name


def upload_dir(client, local_dir: str | Path, bucket: str, prefix: str = "") -> str:
    """Upload every file under ``local_dir`` to ``gs://bucket/prefix/<relative path>``; returns that URI."""
    local_dir = Path(local_dir)
    b = client.bucket(bucket)
    prefix = prefix.strip("/")
    for path in sorted(local_dir.rglob("*")):
        if path.is_file():
            rel = path.relative_to(local_dir).as_posix()
            b.blob(f"{prefix}/{rel}" if prefix else rel).upload_from_filename(str(path))
    return f"gs://{bucket}/{prefix}" if prefix else f"gs://{bucket}"


# -- a fault-injecting proxy -----------------------------------------------------------------------


class FlakyProxy:
    """Relays HTTP to the emulator; the first ``fail_first`` GET requests get ``503``.

    A test double for the network (the emulator never fails transiently); the storage it fronts
    is the real emulator. ``requests`` / ``failures`` / ``bytes_relayed`` are counted, and
    ``downloads`` lists (path, bytes) of each object download.
    """

    def __init__(self, upstream_host: str, upstream_port: int, fail_first: int = 0):
        self.upstream = (upstream_host, upstream_port)
        self.fail_first = fail_first
        self.requests = 0
        self.failures = 0
        self.bytes_relayed = 0
        #: (path, body bytes) of every object download (``alt=media``) relayed
        self.downloads: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy._lock:
                    proxy.requests += 1
                    fail = self.command == "GET" and proxy.failures < proxy.fail_first
                    if fail:
                        proxy.failures += 1
                if fail:
                    payload = b'{"error": {"code": 503, "message": "injected transient failure"}}'
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                with proxy._lock:
                    proxy.bytes_relayed += len(data)
                    if self.command == "GET" and "alt=media" in self.path:
                        proxy.downloads.append((self.path, len(data)))
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _relay

        self.port = free_port()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def flaky_gcs(gcs_server: GcsServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[FlakyProxy]:
    """A :class:`FlakyProxy` (``fail_first`` settable by the test) as ``STORAGE_EMULATOR_HOST``."""
    proxy = FlakyProxy(gcs_server.host, gcs_server.port)
    proxy.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.endpoint)
    try:
        yield proxy
    finally:
        proxy.stop()
