"""A real S3 server for the tests and benchmarks: VersityGW on 127.0.0.1.

S3Server starts VersityGW (built once per machine by .ci/versitygw.sh) with
its posix backend on a temporary data folder, a free loopback port and
random credentials, and stops it by its pid. Tests never talk to a mock: the
faults a real server cannot make come from tests/s3proxy.py, in front of it.

    with S3Server() as srv:
        srv.make_bucket("tpde-test-1")
        env = {**os.environ, **srv.env()}      # for a tpde subprocess
        s3 = srv.client()                       # boto3, path-style
        srv.kill9(); srv.restart()              # same data folder, same port

Standard library only at import (boto3 is imported by client()), and no
pytest: benchmarks import this too. A missing binary raises
S3ServerMissing, whose message is one line naming .ci/versitygw.sh.
"""

from __future__ import annotations

import http.client
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

VERSION = "v1.8.0"
REGION = "us-east-1"
START_TIMEOUT_S = 60.0  # a cold 84 MB binary on a loaded 2-core machine
STOP_TIMEOUT_S = 10.0
_PORT_TRIES = 5


class S3ServerError(RuntimeError):
    """The S3 test server did not start or stop as asked."""


class S3ServerMissing(S3ServerError):
    """The VersityGW binary is not built on this machine."""


def cache_dir() -> Path:
    """Where .ci/versitygw.sh builds the server (the same rule as build.sh's cache)."""
    base = os.environ.get("TPDE_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tpde"


def binary() -> Path:
    """The VersityGW binary: $TPDE_VERSITYGW, else the cache's; raises
    S3ServerMissing (one line, naming .ci/versitygw.sh) when it is absent."""
    env = os.environ.get("TPDE_VERSITYGW")
    path = Path(env) if env else cache_dir() / f"versitygw-{VERSION}" / "bin" / "versitygw"
    if not (path.is_file() and os.access(path, os.X_OK)):
        where = "TPDE_VERSITYGW=" + env if env else str(path)
        raise S3ServerMissing(f"no S3 test server at {where}: build it with .ci/versitygw.sh "
                              f"(./build.sh test runs it), or set TPDE_VERSITYGW to a VersityGW binary")
    return path


def free_port() -> int:
    """A loopback port free at the time of asking (the server start retries
    when another process took it meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """One VersityGW process on 127.0.0.1. start() picks a free port (kept
    by restart()), data_dir is a fresh temporary folder unless given (it
    is kept by restart(), and removed by stop() only if this made it)."""

    def __init__(self, data_dir: Optional[Path] = None, *, binary_path: Optional[Path] = None) -> None:
        self.binary = Path(binary_path) if binary_path else binary()
        self.access_key = "TPDE" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.region = REGION
        self._workdir = Path(tempfile.mkdtemp(prefix="tpde-s3server-"))
        self._owns_data = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else self._workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self._workdir / "versitygw.log"
        self.port: Optional[int] = None
        self.proc: Optional[subprocess.Popen] = None
        self.starts = 0

    # --- addresses and clients ------------------------------------------

    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise S3ServerError("the S3 test server is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    def env(self, endpoint: Optional[str] = None) -> Dict[str, str]:
        """The standard AWS variables a client (tpde, boto3) needs to reach
        this server, or the given endpoint (a proxy in front of it)."""
        return {
            "AWS_ENDPOINT_URL": endpoint or self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }

    def client(self, endpoint: Optional[str] = None, *, attempts: int = 3, **config: Any) -> Any:
        """A boto3 S3 client of this server (or of endpoint, a proxy in front
        of it): path-style, standard retry mode with at most attempts
        attempts in all (1: no retry); config adds botocore Config options."""
        import boto3
        from botocore.config import Config

        # total_max_attempts counts the first; botocore's max_attempts does not.
        cfg = Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "total_max_attempts": attempts},
                     **config)
        return boto3.client("s3", endpoint_url=endpoint or self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region, config=cfg)

    def make_bucket(self, name: str) -> str:
        """Create bucket name (a DNS-style name: "tpde-test-1", not "b1") and return it."""
        self.client().create_bucket(Bucket=name)
        return name

    # --- the process ---------------------------------------------------------

    def start(self) -> "S3Server":
        """Start the server (on its previous port after a stop or kill9) and
        wait until it answers HTTP; raises S3ServerError with the log's tail."""
        if self.running():
            raise S3ServerError(f"the S3 test server is already running (pid {self.pid})")
        keep_port = self.port is not None
        last = ""
        for attempt in range(_PORT_TRIES):
            port = self.port if keep_port else free_port()
            if self._launch(port):
                self.port = port
                self.starts += 1
                return self
            last = self._log_tail()
            if "address already in use" not in last.lower():
                break
            time.sleep(0.2 * (attempt + 1))
        raise S3ServerError(f"VersityGW ({self.binary}) did not start on 127.0.0.1:"
                            f"{self.port if keep_port else 'a free port'}: {last or 'no output'}")

    def _launch(self, port: int) -> bool:
        env = dict(os.environ)
        for k in list(env):  # the server's own configuration is ours alone
            if k.startswith("VGW_") or k.startswith("ROOT_"):
                del env[k]
        env.update(ROOT_ACCESS_KEY=self.access_key, ROOT_SECRET_KEY=self.secret_key)
        # --keep-alive: as S3 does, so clients reuse connections (VersityGW
        # closes each by default). --quiet: no request log on stdout.
        cmd = [str(self.binary), "--port", f"127.0.0.1:{port}", "--region", self.region, "--keep-alive",
               "--quiet", "posix", str(self.data_dir)]
        with open(self.log_path, "ab") as log:  # a file, not a pipe nobody drains
            self.proc = subprocess.Popen(cmd, cwd=self._workdir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            if _answers(port):
                return True
            time.sleep(0.05)
        self._stop_process(signal.SIGKILL)
        with open(self.log_path, "ab") as log:
            log.write(f"\n(no HTTP answer within {START_TIMEOUT_S:.0f} s)".encode())
        return False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after STOP_TIMEOUT_S) and
        remove the temporary folder this made; a data_dir given is kept."""
        self._stop_process(signal.SIGTERM)
        # The data folder is inside it unless the caller gave one (kept).
        shutil.rmtree(self._workdir, ignore_errors=True)

    def terminate(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL), keeping the data for restart()."""
        self._stop_process(signal.SIGTERM)

    def kill9(self) -> None:
        """SIGKILL the server, as a crash would (for tests that kill it mid-upload)."""
        self._stop_process(signal.SIGKILL)

    def restart(self) -> "S3Server":
        """Start again on the same data folder, port and credentials."""
        self._stop_process(signal.SIGTERM)
        return self.start()

    def _stop_process(self, sig: int) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        # By its pid, never by name: other servers may be running.
        proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)

    def _log_tail(self, lines: int = 5) -> str:
        """The last lines of the server's output, on one line, with the
        credentials masked (none may appear in any output)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        tail: List[str] = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
        out = " | ".join(tail)
        for secret in (self.access_key, self.secret_key):
            out = out.replace(secret, "***")
        return out

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:  # no credentials
        return f"S3Server(endpoint=http://127.0.0.1:{self.port}, pid={self.pid}, data_dir={self.data_dir})"


def _answers(port: int) -> bool:
    """Whether an HTTP server answers on 127.0.0.1:port (any status: an
    unsigned GET / is refused, and that is an answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
