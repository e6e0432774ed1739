"""A real S3-compatible server on loopback for tests, with a fault-injecting HTTP proxy in front.

- `moto.server.ThreadedMotoServer` speaks the S3 REST API (ListObjectsV2 pagination, multipart
  uploads, SigV4 and, when switched on, IAM authentication) on 127.0.0.1 and a free port.
- `FaultProxy` forwards every request to it unchanged and can answer chosen requests with a 503
  SlowDown, a 500 InternalError or a TCP reset instead, so that the retry paths of botocore, s3fs
  and `curation.storage.with_retries` run against real network failures. It logs every request
  (operation, status, the access key id the request was signed with) for the tests to assert on.

Fixtures (import them into a test module: `from tests.s3server import s3, s3_server  # noqa: F401`):
- `s3_server` (session): the server and the proxy.
- `s3` (function): points AWS_ENDPOINT_URL at the proxy and sets AWS_ACCESS_KEY_ID /
  AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION with monkeypatch, makes a fresh bucket, clears the
  proxy's faults and log and curation.storage's filesystem cache.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}

ERROR_BODIES = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "internal": (500, "InternalError", "We encountered an internal error. Please try again."),
    "unavailable": (503, "ServiceUnavailable", "Service is unable to handle request."),
}


def s3_operation(method: str, path: str, query: str) -> str:
    """Name the S3 operation of a request (enough of them for the tests)."""
    q = parse_qs(query, keep_blank_values=True)
    key = path.strip("/").partition("/")[2]
    if method == "GET" and "list-type" in q:
        return "ListObjectsV2"
    if method == "POST" and "uploads" in q:
        return "CreateMultipartUpload"
    if method == "PUT" and "partNumber" in q:
        return "UploadPart"
    if method == "POST" and "uploadId" in q:
        return "CompleteMultipartUpload"
    if method == "DELETE" and "uploadId" in q:
        return "AbortMultipartUpload"
    if method == "PUT" and not key:
        return "CreateBucket"
    if method == "PUT":
        return "PutObject"
    if method == "GET" and key:
        return "GetObject"
    if method == "GET":
        return "ListObjects"
    if method == "HEAD" and key:
        return "HeadObject"
    if method == "HEAD":
        return "HeadBucket"
    if method == "DELETE":
        return "DeleteObject"
    if method == "POST" and "delete" in q:
        return "DeleteObjects"
    return f"{method} {path}"


@dataclass
class Fault:
    operation: str  # as named by s3_operation
    kind: str  # slowdown | internal | unavailable | reset
    times: int = 1
    key_contains: str = ""
    fired: int = 0


@dataclass
class LoggedRequest:
    operation: str
    method: str
    path: str
    query: str
    status: int | None  # None: connection reset
    fault: str | None
    access_key: str | None


@dataclass
class FaultProxy:
    target_host: str
    target_port: int
    faults: list[Fault] = field(default_factory=list)
    log: list[LoggedRequest] = field(default_factory=list)
    # called with (operation, path) before a request is forwarded (after fault matching)
    before_forward: Callable[[str, str], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def inject(self, operation: str, kind: str, times: int = 1, key_contains: str = "") -> Fault:
        if kind not in ERROR_BODIES and kind != "reset":
            raise ValueError(f"unknown fault kind {kind!r}")
        f = Fault(operation, kind, times, key_contains)
        with self._lock:
            self.faults.append(f)
        return f

    def reset(self) -> None:
        with self._lock:
            self.faults.clear()
            self.log.clear()
        self.before_forward = None

    def ops(self, operation: str | None = None) -> list[LoggedRequest]:
        with self._lock:
            return [r for r in self.log if operation is None or r.operation == operation]

    def _take_fault(self, op: str, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.operation == op and f.fired < f.times and f.key_contains in path:
                    f.fired += 1
                    return f
        return None

    def _record(self, entry: LoggedRequest) -> None:
        with self._lock:
            self.log.append(entry)

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size_line = self.rfile.readline()
                        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                op = s3_operation(self.command, parts.path, parts.query)
                auth = self.headers.get("Authorization", "")
                access_key = None
                if "Credential=" in auth:
                    access_key = auth.split("Credential=", 1)[1].split("/", 1)[0]
                body = self._read_body()
                fault = proxy._take_fault(op, parts.path)
                if fault is not None and fault.kind == "reset":
                    proxy._record(LoggedRequest(op, self.command, parts.path, parts.query, None, "reset", access_key))
                    # RST instead of FIN: the client sees "connection reset by peer".
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault is not None:
                    status, code, message = ERROR_BODIES[fault.kind]
                    payload = (
                        '<?xml version="1.0" encoding="UTF-8"?>\n'
                        f"<Error><Code>{code}</Code><Message>{message}</Message>"
                        f"<Resource>{parts.path}</Resource><RequestId>{uuid.uuid4().hex}</RequestId></Error>"
                    ).encode()
                    proxy._record(LoggedRequest(op, self.command, parts.path, parts.query, status, fault.kind, access_key))
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                if proxy.before_forward is not None:
                    proxy.before_forward(op, parts.path)
                conn = http.client.HTTPConnection(proxy.target_host, proxy.target_port, timeout=120)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for k, v in self.headers.items():
                        if k.lower() in HOP_BY_HOP or k.lower() == "content-length":
                            continue
                        conn.putheader(k, v)
                    if body or self.command in ("PUT", "POST"):
                        conn.putheader("Content-Length", str(len(body)))
                    conn.endheaders(body or None)
                    resp = conn.getresponse()
                    data = resp.read()
                    headers = resp.getheaders()
                finally:
                    conn.close()
                proxy._record(LoggedRequest(op, self.command, parts.path, parts.query, resp.status, None, access_key))
                self.send_response(resp.status)
                for k, v in headers:
                    if k.lower() in HOP_BY_HOP or k.lower() in ("content-length", "date", "server"):
                        continue
                    self.send_header(k, v)
                if self.command == "HEAD":
                    cl = dict((k.lower(), v) for k, v in headers).get("content-length")
                    if cl is not None:
                        self.send_header("Content-Length", cl)
                    self.end_headers()
                    return
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@dataclass
class S3Server:
    moto_endpoint: str
    proxy: FaultProxy

    @property
    def endpoint(self) -> str:
        """Where the code under test talks to (through the proxy)."""
        return self.proxy.endpoint

    def direct_client(self, access_key: str = "testing", secret_key: str = "testing"):
        """A boto3 client straight to moto (no proxy, no faults): for seeding and checking."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.moto_endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1, "mode": "standard"}, max_pool_connections=32),
        )

    def set_auth(self, initial_no_auth_actions: float) -> None:
        """Switch moto's IAM authentication on after N more unauthenticated actions (inf = off)."""
        import urllib.request

        req = urllib.request.Request(
            f"{self.moto_endpoint}/moto-api/reset-auth", data=str(initial_no_auth_actions).encode(), method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200


@dataclass
class S3Env:
    server: S3Server
    bucket: str

    @property
    def proxy(self) -> FaultProxy:
        return self.server.proxy

    def uri(self, *parts: str) -> str:
        return "s3://" + "/".join([self.bucket, *(p.strip("/") for p in parts)])


@pytest.fixture(scope="session")
def s3_server():
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:  # a free port on loopback
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    proxy = FaultProxy(host, port)
    proxy.start()
    try:
        yield S3Server(f"http://{host}:{port}", proxy)
    finally:
        proxy.stop()
        server.stop()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch) -> S3Env:
    from curation import storage

    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "S3_ENDPOINT_URL", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # No shared config files: credentials and endpoint must come from the environment alone.
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage._FS_CACHE.clear()
    s3_server.proxy.reset()
    bucket = f"curation-{uuid.uuid4().hex[:12]}"
    s3_server.direct_client().create_bucket(Bucket=bucket)
    yield S3Env(s3_server, bucket)
    s3_server.proxy.reset()
    storage._FS_CACHE.clear()
