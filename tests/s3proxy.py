"""A fault-injecting HTTP/1.1 proxy between an S3 client and a real S3 server.

The real server (tests/s3server.py) cannot be made to throttle, drop a
connection mid-part, answer slowly or sit behind a slow link; this proxy,
on 127.0.0.1, does that to chosen requests and passes everything else
through unchanged (the Host header too, so SigV4 signatures stay valid):

    with FaultProxy(server.endpoint) as proxy:
        s3 = server.client(proxy.endpoint)              # or server.env(proxy.endpoint)
        proxy.slow_down(2, on("PUT", "/bucket/key"))    # the next 2 such PUTs: 503 SlowDown
        proxy.reset_after(100_000, on("PUT"))           # RST after 100 kB of the next PUT's body
        proxy.reset_after(1000, on("GET"), direction="response")
        proxy.delay(0.5, on("GET"))                     # hold the next GET's answer
        proxy.set_bandwidth(125_000_000)                # 1 Gbit/s each way, all connections
        proxy.count("PUT", "/bucket/key"), proxy.records, proxy.link_stats()

A predicate is called with (method, target), the target with its query
(`?partNumber=2&uploadId=...`); on() builds common ones. Each fault fires on
the next n requests it matches, then is spent; a request takes at most one
fault of each kind (error, reset, delay). Standard library only; one thread
per client connection and a fresh upstream connection per request (no stale
upstream connection can fail a request the client would not retry).
"""

from __future__ import annotations

import collections
import select
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable, Counter, Dict, List, Optional, Tuple
from xml.sax.saxutils import escape

Match = Callable[[str, str], bool]

CHUNK = 64 * 1024
MAX_HEAD = 64 * 1024
EXPECT_WAIT_S = 2.0  # for a server's 100 Continue (clients wait 1 s, then send the body anyway)
SOCKET_TIMEOUT_S = 300.0
LINK_BURST_S = 0.01  # at 1 Gbit/s: 1.25 MB sent at once after the link was idle  # a relay that hangs this long ends, rather than the test run


def on(method: Optional[str] = None, path: Optional[str] = None, *, path_prefix: Optional[str] = None,
       query: Optional[str] = None, params: Optional[Dict[str, str]] = None) -> Match:
    """A predicate on what is given: the method equals method; the path
    (without the query) equals path, or starts with path_prefix; the raw
    query contains query (e.g. "uploads"); each of params has that value in
    the query (e.g. {"partNumber": "2"})."""

    def match(m: str, target: str) -> bool:
        p, _, q = target.partition("?")
        p = urllib.parse.unquote(p)
        if params:
            qs = urllib.parse.parse_qs(q, keep_blank_values=True)
            if any(qs.get(k) != [v] for k, v in params.items()):
                return False
        return ((method is None or m == method) and (path is None or p == path)
                and (path_prefix is None or p.startswith(path_prefix)) and (query is None or query in q))

    return match


def _any(method: str, target: str) -> bool:
    return True


@dataclass
class Record:
    """One request as the proxy saw it."""
    method: str
    target: str
    path: str
    status: Optional[int] = None  # of the answer the client got; None: reset or no answer
    fault: Optional[str] = None  # "error 503 SlowDown", "reset request after 100000", "delay 0.5"
    request_body_bytes: int = 0
    response_body_bytes: int = 0


@dataclass
class _Fault:
    kind: str  # "error" | "reset" | "delay"
    remaining: int
    match: Match
    status: int = 0
    code: str = ""
    message: str = ""
    after: int = 0
    direction: str = "request"
    seconds: float = 0.0
    fired: int = 0


@dataclass
class LinkStats:
    """What the bandwidth cap did in one direction: the bytes it carried,
    the link time they need at the cap (bytes / rate), and the sleeps it
    made to hold that rate. Accounting, not a measurement."""
    rate: float
    bytes: int = 0
    link_time_s: float = 0.0
    sleeps: int = 0
    slept_s: float = 0.0


class _Link:
    """A bandwidth cap shared by every connection in one direction: each
    chunk takes the next free slot of len/rate seconds, and is passed on at
    the end of its slot, as a link of that rate would deliver it. Slots
    follow on from the last one, not from now, while the link is busy: a
    sleep that overran is made up by the next chunks instead of lowering
    the rate (a 64 KiB slot at 1 Gbit/s is 0.5 ms, the size of a sleep's
    overrun on a loaded machine). An idle link keeps LINK_BURST_S of credit.
    """

    def __init__(self, rate: float) -> None:
        if not rate > 0:
            raise ValueError(f"bandwidth must be > 0 bytes/s, got {rate}")
        self.stats = LinkStats(rate=float(rate))
        self._free_at = 0.0
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        with self._lock:
            now = time.monotonic()
            slot = n / self.stats.rate
            self._free_at = max(self._free_at, now - LINK_BURST_S) + slot
            wait = self._free_at - now
            self.stats.bytes += n
            self.stats.link_time_s += slot
            if wait > 0:
                self.stats.sleeps += 1
                self.stats.slept_s += wait
        if wait > 0:
            time.sleep(wait)


class _Reset(Exception):
    """The proxy reset the client's connection, as a fault asked."""


class _Closed(Exception):
    """A peer closed its connection mid-message."""


class _Reader:
    """Buffered reads from a socket, with heads read line by line."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def readline(self) -> bytes:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line
            if len(self.buf) > MAX_HEAD:
                raise _Closed("a header line longer than 64 KiB")
            data = self.sock.recv(CHUNK)
            if not data:
                line = bytes(self.buf)
                self.buf.clear()
                return line
            self.buf += data

    def read_some(self, n: int) -> bytes:
        if self.buf:
            out = bytes(self.buf[:n])
            del self.buf[:n]
            return out
        return self.sock.recv(min(n, CHUNK))

    def read_head(self) -> Optional[bytes]:
        """An HTTP head up to its blank line; None at a clean EOF before it."""
        lines: List[bytes] = []
        size = 0
        while True:
            line = self.readline()
            if not line:
                if lines:
                    raise _Closed("EOF inside an HTTP head")
                return None
            if not lines and line in (b"\r\n", b"\n"):
                continue  # stray CRLF between messages
            lines.append(line)
            size += len(line)
            if size > MAX_HEAD:
                raise _Closed("an HTTP head longer than 64 KiB")
            if line in (b"\r\n", b"\n"):
                return b"".join(lines)


def _parse_head(head: bytes) -> Tuple[List[str], Dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    first = lines[0].split(" ", 2)
    headers: Dict[str, str] = {}
    for ln in lines[1:]:
        if ":" in ln:
            k, _, v = ln.partition(":")
            k = k.strip().lower()
            headers[k] = f"{headers[k]}, {v.strip()}" if k in headers else v.strip()
    return first, headers


def _framing(headers: Dict[str, str]) -> Tuple[str, int]:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return "chunked", 0
    if "content-length" in headers:
        n = int(headers["content-length"])
        if n < 0:
            raise _Closed("a negative Content-Length")
        return "length", n
    return "none", 0


class FaultProxy:
    """The proxy; start() (or `with`) listens on 127.0.0.1:port (0: a free
    one), endpoint is its URL, stop() closes it and every connection."""

    def __init__(self, upstream: str, port: int = 0) -> None:
        u = urllib.parse.urlsplit(upstream if "://" in upstream else f"http://{upstream}")
        if u.scheme != "http" or not u.hostname or not u.port:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream = (u.hostname, u.port)
        self._port = port
        self._lock = threading.Lock()
        self._faults: List[_Fault] = []
        self._links: Dict[str, Optional[_Link]] = {"up": None, "down": None}
        self._listener: Optional[socket.socket] = None
        self._threads: List[threading.Thread] = []
        self._socks: List[socket.socket] = []  # open client and upstream connections
        self._stopping = threading.Event()
        self.records: List[Record] = []
        self.counts: Counter[Tuple[str, str]] = collections.Counter()
        self.bytes_up = 0  # from clients to the server, heads included
        self.bytes_down = 0  # from the server (or the proxy's own answers) to clients
        self.resets = 0
        self.errors: List[str] = []  # relay failures not asked for by a fault (a test may assert none)

    # --- lifecycle ---------------------------------------------------------------

    def start(self) -> "FaultProxy":
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self._port))
        ls.listen(128)
        ls.settimeout(0.2)  # the accept loop checks for stop() this often
        self._listener = ls
        self._port = ls.getsockname()[1]
        t = threading.Thread(target=self._accept_loop, name="s3proxy-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    @property
    def port(self) -> int:
        return self._port

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for c in socks:
            try:
                c.shutdown(socket.SHUT_RDWR)  # wakes its thread's recv
            except OSError:
                pass
        for t in list(self._threads):
            t.join(timeout=5)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- faults --------------------------------------------------------------------

    def fail(self, n: int, match: Optional[Match] = None, *, status: int = 503, code: str = "SlowDown",
             message: str = "Please reduce your request rate.") -> None:
        """Answer the next n matching requests with status and an S3 XML
        error body of code, without passing them to the server."""
        self._add(_Fault("error", n, match or _any, status=status, code=code, message=message))

    def slow_down(self, n: int, match: Optional[Match] = None) -> None:
        """The next n matching requests get 503 SlowDown, as S3 throttles."""
        self.fail(n, match)

    def reset_after(self, nbytes: int, match: Optional[Match] = None, *, direction: str = "request",
                    n: int = 1) -> None:
        """Reset (TCP RST) the client's connection after nbytes of the
        request body (direction="request") or of the response body
        ("response") of the next n matching requests."""
        if direction not in ("request", "response"):
            raise ValueError(f"direction must be 'request' or 'response', got {direction!r}")
        self._add(_Fault("reset", n, match or _any, after=int(nbytes), direction=direction))

    def delay(self, seconds: float, match: Optional[Match] = None, *, n: int = 1) -> None:
        """Hold the answer to the next n matching requests for seconds (a slow server)."""
        self._add(_Fault("delay", n, match or _any, seconds=float(seconds)))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending_faults(self) -> int:
        """How many fault firings are left unspent."""
        with self._lock:
            return sum(f.remaining for f in self._faults)

    def set_bandwidth(self, bytes_per_s: Optional[float]) -> None:
        """Cap each direction to bytes_per_s over all connections (None: no
        cap); the accounting restarts."""
        with self._lock:
            self._links = {d: (_Link(bytes_per_s) if bytes_per_s else None) for d in ("up", "down")}

    def link_stats(self) -> Dict[str, Optional[LinkStats]]:
        """The cap's accounting per direction ("up": client to server)."""
        with self._lock:
            return {d: (LinkStats(**vars(k.stats)) if k else None) for d, k in self._links.items()}

    def count(self, method: Optional[str] = None, path: Optional[str] = None) -> int:
        """Requests seen (faulted ones included) with this method and path (None: any)."""
        with self._lock:
            return sum(c for (m, p), c in self.counts.items()
                       if (method is None or m == method) and (path is None or p == path))

    def _add(self, fault: _Fault) -> None:
        if fault.remaining < 1:
            raise ValueError(f"a fault must fire at least once, got n={fault.remaining}")
        with self._lock:
            self._faults.append(fault)

    def _take(self, method: str, target: str) -> Dict[str, _Fault]:
        taken: Dict[str, _Fault] = {}
        with self._lock:
            for f in self._faults:
                if f.remaining > 0 and f.kind not in taken and f.match(method, target):
                    f.remaining -= 1
                    f.fired += 1
                    taken[f.kind] = f
            self._faults = [f for f in self._faults if f.remaining > 0]
        return taken

    # --- relaying ------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return  # closed by stop()
            conn.settimeout(SOCKET_TIMEOUT_S)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t = threading.Thread(target=self._serve, args=(conn,), name="s3proxy-conn", daemon=True)
            with self._lock:
                self._socks.append(conn)
                self._threads = [x for x in self._threads if x.is_alive()]
                self._threads.append(t)
            t.start()

    def _serve(self, client: socket.socket) -> None:
        reader = _Reader(client)
        try:
            while not self._stopping.is_set():
                head = reader.read_head()
                if head is None or not self._exchange(client, reader, head):
                    break
        except _Reset:
            pass
        except (OSError, _Closed, ValueError) as e:
            if not self._stopping.is_set():
                with self._lock:
                    self.errors.append(f"{type(e).__name__}: {e}")
        finally:
            with self._lock:
                if client in self._socks:
                    self._socks.remove(client)
            client.close()

    def _send(self, sock: socket.socket, data: bytes, direction: str) -> None:
        link = self._links[direction]
        if link is not None:
            link.take(len(data))
        # Counted before it is sent: a client that has the bytes finds them counted.
        with self._lock:
            if direction == "up":
                self.bytes_up += len(data)
            else:
                self.bytes_down += len(data)
        sock.sendall(data)

    def _reset(self, client: socket.socket) -> None:
        # SO_LINGER 0: close() sends RST, as a dropped connection does.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with self._lock:
            self.resets += 1
        raise _Reset()

    def _exchange(self, client: socket.socket, reader: _Reader, head: bytes) -> bool:
        """Relay one request and its answer; whether the connection stays open."""
        first, headers = _parse_head(head)
        if len(first) < 3 or not first[2].startswith("HTTP/"):
            raise _Closed(f"not an HTTP request line: {first!r}"[:200])
        method, target = first[0], first[1]
        path = urllib.parse.unquote(target.partition("?")[0])
        rec = Record(method=method, target=target, path=path)
        faults = self._take(method, target)
        with self._lock:
            self.records.append(rec)
            self.counts[(method, path)] += 1
        framing = _framing(headers)
        expect = "100-continue" in headers.get("expect", "").lower()
        keep = "close" not in headers.get("connection", "").lower()

        err = faults.get("error")
        if err is not None:
            rec.fault = f"error {err.status} {err.code}"
            with self._lock:
                self.bytes_up += len(head)
            if not expect:  # the client sends its body at once: take it off the wire
                self._relay_body(reader, None, framing, "up", rec, None, client)
            self._answer_error(client, rec, err, method)
            return False
        reset = faults.get("reset")
        if reset is not None:
            rec.fault = f"reset {reset.direction} after {reset.after}"
        delay = faults.get("delay")

        up = socket.create_connection(self.upstream, timeout=SOCKET_TIMEOUT_S)
        with self._lock:
            self._socks.append(up)
        try:
            up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            upr = _Reader(up)
            self._send(up, head, "up")
            if expect and select.select([up], [], [], EXPECT_WAIT_S)[0]:
                # The server answers 100 Continue (or a final answer) before
                # the client sends the body: pass that on first. (A server
                # that says nothing gets the body after the wait, as clients
                # send it after theirs.)
                rhead = upr.read_head()
                if rhead is None:
                    raise _Closed("the server closed without answering")
                status = int(_parse_head(rhead)[0][1])
                if status != 100:
                    self._relay_response(client, upr, rhead, method, rec, None, delay)
                    return False
                self._send(client, rhead, "down")
            req_reset = reset if reset is not None and reset.direction == "request" else None
            self._relay_body(reader, up, framing, "up", rec, req_reset, client)
            while True:
                rhead = upr.read_head()
                if rhead is None:
                    raise _Closed("the server closed without answering")
                status = int(_parse_head(rhead)[0][1])
                if 100 <= status < 200:
                    self._send(client, rhead, "down")
                    continue
                break
            resp_reset = reset if reset is not None and reset.direction == "response" else None
            return self._relay_response(client, upr, rhead, method, rec, resp_reset, delay) and keep
        finally:
            with self._lock:
                self._socks.remove(up)
            up.close()

    def _relay_response(self, client: socket.socket, upr: _Reader, rhead: bytes, method: str, rec: Record,
                        reset: Optional[_Fault], delay: Optional[_Fault]) -> bool:
        first, headers = _parse_head(rhead)
        rec.status = int(first[1])
        if delay is not None:
            rec.fault = (rec.fault + ", " if rec.fault else "") + f"delay {delay.seconds}"
            self._stopping.wait(delay.seconds)  # stop() ends the wait
        self._send(client, rhead, "down")
        if method == "HEAD" or rec.status in (204, 304):
            framing: Tuple[str, int] = ("none", 0)
        else:
            framing = _framing(headers)
            if framing[0] == "none" and "content-length" not in headers:
                framing = ("close", 0)  # the body ends where the connection does
        self._relay_body(upr, client, framing, "down", rec, reset, client)
        return framing[0] != "close" and "close" not in headers.get("connection", "").lower()

    def _relay_body(self, src: _Reader, dst: Optional[socket.socket], framing: Tuple[str, int], direction: str,
                    rec: Record, reset: Optional[_Fault], client: socket.socket) -> None:
        """Pass one body from src to dst (None: drop it), framed as the head
        said; with reset, RST the client after reset.after body bytes."""
        sent = 0

        def forward(data: bytes) -> None:
            nonlocal sent
            if reset is not None and sent + len(data) >= reset.after:
                part = data[:max(0, reset.after - sent)]
                self._count(rec, direction, len(part))
                if part and dst is not None:
                    self._send(dst, part, direction)
                self._reset(client)
            sent += len(data)
            self._count(rec, direction, len(data))  # before it is sent, as _send counts
            if dst is not None:
                self._send(dst, data, direction)
            elif direction == "up":
                with self._lock:
                    self.bytes_up += len(data)

        def exactly(n: int) -> None:
            while n > 0:
                data = src.read_some(min(n, CHUNK))
                if not data:
                    raise _Closed("EOF inside a body")
                n -= len(data)
                forward(data)

        kind, length = framing
        if kind == "length":
            exactly(length)
        elif kind == "chunked":
            while True:
                line = src.readline()
                if not line.endswith(b"\n"):
                    raise _Closed("EOF inside a chunked body")
                forward(line)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, then the blank line
                        line = src.readline()
                        if not line.endswith(b"\n"):
                            raise _Closed("EOF inside chunked trailers")
                        forward(line)
                        if line in (b"\r\n", b"\n"):
                            return
                exactly(size)
                line = src.readline()
                if not line.endswith(b"\n"):
                    raise _Closed("EOF inside a chunked body")
                forward(line)
        elif kind == "close":
            while True:
                data = src.read_some(CHUNK)
                if not data:
                    return
                forward(data)
        if reset is not None and sent < reset.after:
            # A body shorter than the reset point: reset at its end, as asked.
            self._reset(client)

    def _count(self, rec: Record, direction: str, n: int) -> None:
        with self._lock:
            if direction == "up":
                rec.request_body_bytes += n
            else:
                rec.response_body_bytes += n

    def _answer_error(self, client: socket.socket, rec: Record, f: _Fault, method: str) -> None:
        with self._lock:
            request_id = f"tpde-proxy-{len(self.records)}"
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{escape(f.code)}</Code><Message>{escape(f.message)}</Message>"
                f"<Resource>{escape(rec.path)}</Resource><RequestId>{request_id}</RequestId></Error>").encode()
        reason = {500: "Internal Server Error", 503: "Service Unavailable", 403: "Forbidden"}.get(f.status, "Error")
        head = (f"HTTP/1.1 {f.status} {reason}\r\nContent-Type: application/xml\r\n"
                f"Content-Length: {len(body)}\r\nx-amz-request-id: {request_id}\r\nConnection: close\r\n\r\n").encode()
        rec.status = f.status
        if method != "HEAD":
            self._count(rec, "down", len(body))
        self._send(client, head if method == "HEAD" else head + body, "down")
