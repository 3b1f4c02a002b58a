"""Gateways the benchmark sends to: nginx as the HTTP/2 sink, a counting binary sink, the project's mock.

Every sink is a child process bound to 127.0.0.1 on a free port and stopped by its PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from apnsd.testing.devpki import DevPki, make_dev_pki
from apnsd.testing.redis_server import free_port

ECHO_MODULE = "/usr/lib/nginx/modules/ngx_http_echo_module.so"

NGINX_CONF = """\
load_module {echo_module};
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  # One log line per connection (its first request): counts TLS connections that carried requests.
  map $connection_requests $first_request {{ 1 1; default 0; }}
  log_format conn '$connection $ssl_session_reused $ssl_protocol $msec';
  # One connection must carry the whole run (APNs-like): no request cap, long timeouts.
  # (http2_max_requests/http2_idle_timeout are obsolete in 1.22: keepalive_* cover HTTP/2.)
  keepalive_requests 1000000000;
  keepalive_timeout 3600s;
  client_header_timeout 3600s;
  client_body_timeout 3600s;
  send_timeout 3600s;
  http2_max_concurrent_streams 1000;
  http2_streams_index_size 65536;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_certificate {server_cert};
  ssl_certificate_key {server_key};
  ssl_session_cache off;
  server {{
    # client-certificate auth, like APNs with a provider certificate
    listen 127.0.0.1:{cert_port} ssl http2;
    ssl_client_certificate {ca};
    ssl_verify_client on;
    access_log {dir}/conn-{cert_port}.log conn if=$first_request;
{locations}
  }}
  server {{
    # no client certificate: token (JWT) auth figure, and h2load (which cannot present one)
    listen 127.0.0.1:{open_port} ssl http2;
    ssl_verify_client off;
    access_log {dir}/conn-{open_port}.log conn if=$first_request;
{locations}
  }}
{delayed}
  server {{
    listen 127.0.0.1:{status_port};
    location / {{ stub_status; }}
  }}
}}
"""

# Read the whole request body first (echo module), then answer 200 from a named location: HEADERS with
# END_STREAM and content-length 0, no DATA frame, as APNs answers. A bare `return 200` would answer
# before reading the body and then reset the stream.
LOCATIONS = """\
    location /3/device/ { echo_read_request_body; echo_exec @ok; }
    location @ok { add_header apns-id $http_apns_id always; return 200; }
    location / { return 404; }"""

# A real round trip: the same answer, given `delay` seconds after the body is read. echo_sleep is a timer
# (nginx keeps serving every other stream meanwhile). Client certificates are optional on these ports, so
# apnsd (with one) and h2load (without) send to the very same server block.
DELAYED_SERVER = """\
  server {{
    listen 127.0.0.1:{port} ssl http2;
    ssl_client_certificate {ca};
    ssl_verify_client optional;
    access_log {dir}/conn-{port}.log conn if=$first_request;
    location /3/device/ {{ echo_read_request_body; echo_sleep {delay}; echo_exec @ok; }}
    location @ok {{ add_header apns-id $http_apns_id always; return 200; }}
    location / {{ return 404; }}
  }}"""

# The same answers, each 50 ms after the body is read (a timer: nginx goes on serving meanwhile), for a
# gateway as far away as Apple's.
LOCATIONS_50MS = """\
    location /3/device/ { echo_read_request_body; echo_sleep 0.05; echo_exec @ok; }
    location @ok { add_header apns-id $http_apns_id always; return 200; }
    location / { return 404; }"""


def _which(name: str) -> str:
    exe = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if not exe:
        raise RuntimeError(f"{name} is not installed: run `bash benchmarks/setup.sh`")
    return exe


def wait_port(port: int, proc: subprocess.Popen[Any], what: str, timeout: float = 10.0) -> None:
    """Wait until something accepts TCP on 127.0.0.1:port, or fail if proc died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited at start with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout} s")


def stop_pid(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
    """Signal one child by its PID, wait, SIGKILL it if it lingers; returns its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def proc_cpu(pid: int) -> float:
    """utime + stime of a live process, in seconds (from /proc/<pid>/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class NginxSink:
    """nginx (one process, master_process off) with a client-cert port, an open port, stub_status, and one
    port per round-trip delay (``delayed_port[seconds]``) that answers each request that much later."""

    def __init__(self, workdir: str, pki: DevPki, delays: tuple[float, ...] = (), locations: str = "") -> None:
        self.dir = os.path.join(workdir, "nginx")
        self.pki = pki
        self.delays = delays
        self.locations = locations or LOCATIONS
        self.proc: subprocess.Popen[bytes] | None = None
        self.cert_port = self.open_port = self.status_port = 0
        self.delayed_port: dict[float, int] = {}

    def start(self) -> NginxSink:
        os.makedirs(self.dir, exist_ok=True)
        if not os.path.exists(ECHO_MODULE):
            raise RuntimeError(f"{ECHO_MODULE} missing: run `bash benchmarks/setup.sh` (libnginx-mod-http-echo)")
        exe = _which("nginx")
        for _attempt in range(5):  # free_port is racy against other processes on the machine: retry
            self.cert_port, self.open_port, self.status_port = free_port(), free_port(), free_port()
            self.delayed_port = {d: free_port() for d in self.delays}
            ports = [self.cert_port, self.open_port, self.status_port, *self.delayed_port.values()]
            if len(set(ports)) < len(ports):
                continue
            delayed = "\n".join(
                DELAYED_SERVER.format(port=port, delay=f"{d:g}", ca=self.pki.ca_cert, dir=self.dir)
                for d, port in self.delayed_port.items()
            )
            conf = os.path.join(self.dir, "nginx.conf")
            Path(conf).write_text(
                NGINX_CONF.format(
                    echo_module=ECHO_MODULE,
                    dir=self.dir,
                    cert_port=self.cert_port,
                    open_port=self.open_port,
                    status_port=self.status_port,
                    server_cert=self.pki.server_cert,
                    server_key=self.pki.server_key,
                    ca=self.pki.ca_cert,
                    locations=self.locations,
                    delayed=delayed,
                )
            )
            for port in (self.cert_port, self.open_port, *self.delayed_port.values()):
                Path(self.log_path(port)).write_text("")
            self.proc = subprocess.Popen(
                [exe, "-p", self.dir + "/", "-c", conf, "-e", os.path.join(self.dir, "error.log")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                for port in ports:
                    wait_port(port, self.proc, "nginx")
                return self
            except RuntimeError:
                stop_pid(self.proc)
                self.proc = None
        raise RuntimeError(f"nginx would not start; see {self.dir}/error.log:\n" + self._error_tail())

    def _error_tail(self) -> str:
        try:
            return "".join(Path(self.dir, "error.log").read_text().splitlines(True)[-10:])
        except OSError:
            return ""

    def stop(self) -> None:
        stop_pid(self.proc, signal.SIGQUIT)  # graceful: let open connections finish
        self.proc = None

    def log_path(self, port: int) -> str:
        return os.path.join(self.dir, f"conn-{port}.log")

    def connections(self, port: int) -> int:
        """TLS connections that carried at least one request on this port, since start."""
        with open(self.log_path(port), "rb") as fh:
            return sum(1 for _ in fh)

    def connection_lines(self, port: int) -> list[str]:
        with open(self.log_path(port), encoding="utf-8", errors="replace") as fh:
            return fh.read().splitlines()

    def counters(self) -> tuple[int, int]:
        """stub_status 'accepts' and 'requests' over every port (each query adds one connection and one request)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}/", timeout=5) as resp:
            lines = resp.read().decode().splitlines()
        accepts, _handled, requests = (int(x) for x in lines[2].split())
        return accepts, requests

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid) if self.proc else 0.0

    def version(self) -> str:
        out = subprocess.run([_which("nginx"), "-v"], capture_output=True, text=True)
        return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")


class _LineProcess:
    """A child process printing lines; a thread collects them so we can wait for events."""

    def __init__(self, argv: list[str], cwd: str) -> None:
        self.proc = subprocess.Popen(
            argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
        )
        self.lines: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_line(self, pred: Any, timeout: float = 15.0, start: int = 0) -> str:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines[start:]:
                    if pred(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not any(pred(x) for x in self.lines[start:])):
                    err = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
                    raise RuntimeError(f"{self.proc.args[:4]}: expected output did not come; stderr: {err[-2000:]}")
                self.cond.wait(min(left, 0.2))

    def stop(self) -> int | None:
        return stop_pid(self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        """CPU seconds (user + system) the process has used so far."""
        return proc_cpu(self.proc.pid)


def native_binsink(repo: str) -> str | None:
    """The C counting sink (benchmarks/binsink.c), built into benchmarks/build/ when missing or older than its
    source; None when it cannot be built here (no gcc or no OpenSSL headers: see benchmarks/setup.sh)."""
    src = os.path.join(repo, "benchmarks", "binsink.c")
    exe = os.path.join(repo, "benchmarks", "build", "binsink")
    if os.path.exists(exe) and os.path.getmtime(exe) >= os.path.getmtime(src):
        return exe
    gcc = shutil.which("gcc")
    if not gcc:
        return None
    os.makedirs(os.path.dirname(exe), exist_ok=True)
    tmp = f"{exe}.{os.getpid()}.tmp"
    built = subprocess.run([gcc, "-O2", "-o", tmp, src, "-lssl", "-lcrypto"], capture_output=True, text=True)
    if built.returncode != 0:
        Path(tmp).unlink(missing_ok=True)
        return None
    os.replace(tmp, exe)
    return exe


class CountingBinarySink(_LineProcess):
    """The counting binary sink in its own process: the C one (benchmarks/binsink.c) with ``native``, when it
    can be built, else benchmarks/binsink.py; both behave alike and print the same events."""

    def __init__(self, repo: str, python: str, pki_dir: str, fail_prefix: str = "", native: bool = False) -> None:
        extra = ["--fail-prefix", fail_prefix] if fail_prefix else []
        exe = native_binsink(repo) if native else None
        if exe:
            pki = make_dev_pki(pki_dir)
            argv = [exe, "--port", "0", "--cert", pki.server_cert, "--key", pki.server_key, "--ca", pki.ca_cert]
            self.name = "counting sink (benchmarks/binsink.c)"
        else:
            argv = [python, "-m", "benchmarks.binsink", "--port", "0", "--pki-dir", pki_dir]
            self.name = "counting sink (benchmarks/binsink.py)"
        super().__init__([*argv, *extra], repo)
        self.port = int(json.loads(self.wait_line(lambda s: '"listening"' in s))["port"])

    def events(self, kind: str) -> list[dict[str, Any]]:
        with self.cond:
            lines = list(self.lines)
        out = []
        for line in lines:
            if f'"{kind}"' in line:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def connections(self) -> int:
        """Completed TLS handshakes since start."""
        return len(self.events("connected"))

    def closed_since(self, conn_count_before: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The 'closed' events of every connection opened after conn_count_before connections, once each one
        that was opened has closed (call it after the writers exited); raises if one stays open."""
        deadline = time.monotonic() + timeout
        while True:
            opened = {e["conn"] for e in self.events("connected") if e["conn"] > conn_count_before}
            closed = [e for e in self.events("closed") if e["conn"] > conn_count_before]
            if opened <= {e["conn"] for e in closed}:
                return sorted(closed, key=lambda e: e["conn"])
            if time.monotonic() > deadline:
                raise RuntimeError(f"counting sink: connection(s) {sorted(opened)} still open after {timeout} s")
            time.sleep(0.02)

    def wait_closed(self, conn_count_before: int, timeout: float = 30.0) -> dict[str, Any]:
        """The 'closed' event of the first connection opened after conn_count_before connections."""
        target = conn_count_before + 1
        line = self.wait_line(lambda s: '"closed"' in s and json.loads(s)["conn"] == target, timeout)
        return json.loads(line)


class MockBinarySink(_LineProcess):
    """`apnsd mock --protocol binary` in its own process (the project's own gateway emulator)."""

    name = "apnsd mock --protocol binary"

    def __init__(self, repo: str, python: str, pki_dir: str) -> None:
        port = free_port()
        super().__init__(
            [python, "-m", "apnsd.cli", "mock", "--protocol", "binary", "--port", str(port), "--pki-dir", pki_dir], repo
        )
        self.wait_line(lambda s: "listening on" in s)
        self.port = port

    def summary(self) -> dict[str, Any]:
        """Stop it (SIGTERM) and return the JSON summary it prints."""
        self.stop()
        for line in reversed(self.lines):
            if line.startswith("{"):
                return dict(json.loads(line))
        return {}


def python_for(repo: str) -> str:
    venv = os.path.join(repo, ".venv", "bin", "python")
    return venv if os.path.exists(venv) else sys.executable
