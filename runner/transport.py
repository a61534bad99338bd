"""HTTP/1.1 to one provider: a request's bytes out; its status, headers and body back block by
block, as they arrive, over a small pool of keep-alive connections.

Written by hand (asyncio protocols around httptools, the llhttp parser uvicorn uses) because
this is the hot path a benchmark measures: aiohttp's `ClientSession` spends about 0.3 ms of CPU
on each request (URL objects, cookie jar, tracing, stream readers, timers), three times what
the rest of a request costs the runner. Here a request is one write, and each block read is
handed over as it arrived (benchmarks/bench_wholeprocess.py). It does what `client` needs and no
more: HTTP/1.1 with TLS, no proxies (as aiohttp without `trust_env`), no cookies, no redirects
(`client` reports them, never follows them).

A server is untrusted: the response head (status line and headers, informational heads
included) is bounded in bytes, unread body bytes in memory (reading pauses), decompressed bytes
per read (gzip and deflate only), and time (a deadline for the whole request and a stall limit on
every wait). Anything odd is a `TransportError` whose `kind` is the row's `error_type`.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import zlib
from collections import deque
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

import anyio
import httptools

MAX_HEAD_BYTES = 64 * 1024       # a response's status line and headers, all heads together
MAX_INFORMATIONAL = 8            # 1xx heads before the real one
HIGH_WATER = 1024 * 1024         # unread body bytes held: reading pauses above this
PIECE_BYTES = 48                 # ... counting what holding each piece costs (tiny chunks)
INFLATE_BLOCK = 1024 * 1024      # decompressed bytes handed out per read
KEEPALIVE_S = 15.0               # an idle connection older than this is closed, not reused
KEEPALIVE_MARGIN_S = 1.0         # ... or older than the server's `Keep-Alive: timeout=` less this
_TIMEOUT = re.compile(r"(?:^|[,;\s])timeout\s*=\s*(\d{1,6})", re.IGNORECASE)
DRAIN_S = 0.25                   # a finished answer's last bytes (its closing chunk) may come later
DRAIN_BYTES = 64 * 1024          # ... and may not be more than this
_PATH_SAFE = "/%:@!$&'()*+,;=-._~?"   # what a request target keeps as it is (quote() the rest)
_FORBIDDEN = frozenset("\r\n\0")


class TransportError(Exception):
    """The request got no usable HTTP answer; `kind` is its `error_type`."""

    kind = "client_error"


class ConnectFailed(TransportError):
    kind = "connection"


class Disconnected(TransportError):
    kind = "disconnect"


class TimedOut(TransportError):
    kind = "timeout"


class Stalled(TransportError):
    kind = "stall"


class BadResponse(TransportError):
    """Not HTTP/1.1 as the runner reads it (a parse error, a head too large, an encoding)."""


class Headers(dict[str, str]):
    """Response headers by lower-case name (a repeated one joined with `, `); `get` takes any
    case, as `responses.retry_after_s` asks for `Retry-After`."""

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return dict.get(self, name.lower(), default)


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a header name (RFC 9110 token)


def check_header(name: str, value: str) -> None:
    """A header we send must be one line of the request: a token for a name, a value without a
    line break or NUL (`ValueError` naming the header, never quoting the value: it may be a
    credential). The job schema checks `headers:` with it too."""
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"header name {name[:60]!r} is not a valid HTTP header name")
    if any(c in _FORBIDDEN for c in value):
        raise ValueError(f"the value of header {name!r} contains a line break or NUL")


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the one response being read on it (httptools callbacks
    fill it; the reader waits on `waiter`)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.busy = False
        self.idle_since = 0.0
        self.idle_limit = KEEPALIVE_S
        self.waiter: asyncio.Future[None] | None = None
        self.begin()

    def begin(self) -> None:
        """Ready to read the answer to a new request."""
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers = Headers()
        self.head_bytes = 0
        self.framing_bytes = 0       # bytes in a row without a body byte (heads, trailers)
        self.informational = 0
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.reusable = True
        self.until_close = False     # no length, not chunked: the body ends with the connection
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.paused = False
        self.error: TransportError | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.busy:  # bytes nobody asked for: never reuse this one
            self.reusable = False
            self._close()
            return
        body = self.buffered
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadResponse("the server switched protocols"))
        except httptools.HttpParserError as exc:
            if self.error is None and not self.complete:
                self._fail(BadResponse(f"unreadable HTTP answer ({_parser_text(exc)})"))
            self.reusable = False  # (bytes after a complete answer: the answer stands)
            self._close()
        if self.buffered != body or self.complete:
            self.framing_bytes = 0
        else:  # no body byte: a head, chunk framing or trailers, where httptools keeps a header
            self.framing_bytes += len(data)  # line in memory until it ends: bound them all
            if self.framing_bytes > MAX_HEAD_BYTES:
                self._fail(BadResponse(
                    f"the response head is larger than {MAX_HEAD_BYTES} bytes" if not
                    self.head_done else f"more than {MAX_HEAD_BYTES} bytes of trailers or "
                    "chunk framing without a body byte"))
        if self.error is not None:
            self._close()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.busy and not self.complete and self.error is None:
            if self.head_done and self.until_close and exc is None:  # (a reset cuts it short)
                self.complete = True
            else:
                self.error = Disconnected(
                    "the server closed the connection "
                    + ("mid-response" if self.head_done else "before answering"))
        self._wake()

    def pause_writing(self) -> None:  # a request is one write; the transport buffers it
        pass

    def resume_writing(self) -> None:
        pass

    # httptools callbacks (an exception there stops the parser as a parse error)
    def on_message_begin(self) -> None:
        if self.complete:  # a second answer to one request: the first one stands, and
            self.reusable = False  # the connection is not used again
            raise BadResponse("bytes after the answer")

    def on_status(self, reason: bytes) -> None:
        self._count_head(len(reason) + 16)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._count_head(len(name) + len(value) + 4):
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1").strip()
            had = dict.get(self.headers, key)
            self.headers[key] = text if had is None else f"{had}, {text}"

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 100:
            self._fail(BadResponse(f"the answer's status is {status:03d}"))
            return
        if status < 200:  # an informational head; the answer follows
            self.informational += 1
            if self.informational > MAX_INFORMATIONAL:
                self._fail(BadResponse(f"more than {MAX_INFORMATIONAL} informational heads"))
            self.headers = Headers()
            return
        self.status = status
        headers = self.headers
        chunked = "chunked" in (headers.get("transfer-encoding") or "").lower()
        self.until_close = (not chunked and "content-length" not in headers
                            and status not in (204, 304))
        if status in (204, 304) and (chunked or headers.get("content-length", "0") != "0"):
            self.reusable = False  # it has no body; what the server sends as one would be
        self.head_done = True      # read as the next answer

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body) + PIECE_BYTES
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if not self.head_done:  # the end of an informational head
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # (llhttp forgets it on return)

    # for Pool and Response
    def _count_head(self, size: int) -> bool:
        self.head_bytes += size
        if self.head_bytes > MAX_HEAD_BYTES and self.error is None:
            self._fail(BadResponse(f"the response head is larger than {MAX_HEAD_BYTES} bytes"))
        return self.error is None

    def _fail(self, error: TransportError) -> None:
        if self.error is None:
            self.error = error
        self.reusable = False

    def resume(self) -> None:
        """Read again (the reader took or dropped what was held)."""
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def _close(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if transport.get_write_buffer_size():  # the rest of a request nobody will answer:
            transport.abort()                  # close() would hold the socket to send it on
        elif not transport.is_closing():
            transport.close()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, deadline: float, stall_s: float, what: str) -> None:
        """Until something arrives (or the connection ends); `TimedOut` at the deadline,
        `Stalled` after `stall_s` without a byte."""
        loop = self.pool.loop
        now = loop.time()
        until = min(deadline, now + stall_s)
        if until <= now:
            raise self._late(deadline, until, stall_s, what)
        waiter = loop.create_future()
        self.waiter = waiter
        timer = loop.call_at(until, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None
        if waiter.result() is False:
            raise self._late(deadline, until, stall_s, what)

    def _late(self, deadline: float, until: float, stall_s: float,
              what: str) -> TransportError:
        self.reusable = False
        if until >= deadline:
            return TimedOut(f"no {what} before the request's time limit")
        return Stalled(f"no {what} within {stall_s:g} s")


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(False)  # type: ignore[arg-type]


def _parser_text(exc: Exception) -> str:
    return " ".join(str(exc).split())[:120] or type(exc).__name__


class Response:
    """The answer being read: `status`, `headers`, then `read_any()` until it gives b"".
    `release()` when done (the connection is kept only if the answer was read to its end)."""

    __slots__ = ("_coding", "_conn", "_deadline", "_full", "_inflate", "_released", "_stall_s",
                 "_tail", "headers", "status", "url")

    def __init__(self, conn: _Connection, url: str, deadline: float, stall_s: float) -> None:
        self._conn = conn
        self._released = False  # then the connection may carry another request's answer
        self.status = conn.status
        self.headers = conn.headers
        self.url = url
        self._deadline = deadline
        self._stall_s = stall_s
        self._tail = b""
        self._full = False  # the last inflated block was whole: more may wait inside zlib
        self._inflate: zlib._Decompress | None = None
        coding = (conn.headers.get("content-encoding") or "identity").strip().lower()
        self._coding = "gzip" if coding == "x-gzip" else coding
        if self._coding not in ("identity", "gzip", "deflate"):
            self._coding = "identity"
            conn._fail(BadResponse(f"the answer is encoded as {coding[:40]!r}, which the "
                                   "runner does not read"))

    @property
    def content_type(self) -> str:
        """The media type, lower case, without parameters ("" when none was given)."""
        return (self.headers.get("content-type") or "").split(";", 1)[0].strip().lower()

    async def read_any(self) -> bytes:
        """The next bytes of the (decompressed) body as they arrived; b"" at its end. Bytes
        that arrived before an error are handed out before the error is raised."""
        if self._released:
            raise RuntimeError("read_any() after release(): the connection is not this answer's")
        conn = self._conn
        while True:
            if self._tail or self._full:  # what is left from the last read goes first (what
                data = self._inflated(b"")  # arrived since waits; reading pauses if it is much)
                if data:
                    return data
            if conn.chunks:
                chunks = conn.chunks
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                conn.chunks = []
                conn.buffered = 0
                if conn.paused:
                    conn.resume()
                if self._coding == "identity":
                    return data
                data = self._inflated(data)
                if data:
                    return data
                continue
            if conn.error is not None:
                raise conn.error
            if conn.complete:
                if self._coding != "identity":
                    self._check_end()
                return b""
            await conn.wait(self._deadline, self._stall_s, "data")

    def _inflated(self, data: bytes) -> bytes:
        """At most INFLATE_BLOCK bytes of decompressed body; the rest of the input waits in
        `_tail` for the next read (a gzip bomb never inflates past what the caller reads)."""
        data = self._tail + data if self._tail else data
        self._full = False
        inflate = self._inflate
        if inflate is None:
            if self._coding == "gzip":
                wbits = 16 + zlib.MAX_WBITS
            elif len(data) < 2 and not self._conn.complete:
                self._tail = data        # deflate: its first two bytes say which kind
                return b""
            elif len(data) >= 2 and data[0] & 0x0F == 8 and int.from_bytes(data[:2]) % 31 == 0:
                wbits = zlib.MAX_WBITS   # deflate as the RFC says: in a zlib wrapper
            else:
                wbits = -zlib.MAX_WBITS  # deflate as some servers send it: raw
            inflate = self._inflate = zlib.decompressobj(wbits)
        try:
            out = inflate.decompress(data, INFLATE_BLOCK)
        except zlib.error:
            raise BadResponse(f"the body is not valid {self._coding}") from None
        self._tail = inflate.unconsumed_tail
        self._full = len(out) == INFLATE_BLOCK  # (zlib may hold output of input it took)
        if inflate.eof and inflate.unused_data:
            if self._coding != "gzip":
                raise BadResponse(f"bytes after the end of the {self._coding} body")
            self._tail = inflate.unused_data  # another gzip member (RFC 1952 allows several)
            self._inflate = None
        return out

    def _check_end(self) -> None:
        """A compressed body that ended must have ended its compressed stream too."""
        if (self._inflate is not None and not self._inflate.eof) or self._tail:
            raise BadResponse(f"the {self._coding} body is cut short")

    async def drain(self) -> None:
        """Wait briefly for the rest of an answer the caller is done with (a stream's closing
        chunk often comes just after its [DONE]) and drop it, so that the connection is kept;
        it is not kept if the rest is long in coming, large, or odd."""
        if self._released:
            return
        conn = self._conn
        deadline = min(self._deadline, conn.pool.loop.time() + DRAIN_S)
        dropped = 0
        try:
            while not conn.complete and conn.error is None:
                dropped += conn.buffered
                conn.chunks = []
                conn.buffered = 0
                conn.resume()
                if dropped > DRAIN_BYTES:
                    conn.reusable = False
                    return
                await conn.wait(deadline, DRAIN_S, "end")
        except TransportError:
            conn.reusable = False

    def release(self) -> None:
        """Give the connection back: kept if the answer was read to its end, closed if not.
        Once only: a second call must not give back a connection another request now uses."""
        conn = self._conn
        if self._released or not conn.busy:
            return
        self._released = True
        conn.busy = False
        # not kept either while our request is still being written (the server answered
        # before reading it all): the rest of it would come before the next request
        reuse = (conn.complete and conn.reusable and conn.error is None and not self._tail
                 and conn.keep_alive and conn.transport is not None
                 and not conn.transport.get_write_buffer_size())
        if reuse:
            conn.resume()  # (an answer released unread may have paused reading)
        conn.pool._back(conn, reuse=reuse)


def _idle_limit(keep_alive: str | None) -> float:
    """How long an idle connection may wait for its next request: less than the server said it
    keeps one (`Keep-Alive: timeout=5`, as Node sends), so that it is not closed under a request
    on its way; without the header, KEEPALIVE_S."""
    found = _TIMEOUT.search(keep_alive) if keep_alive else None
    if found is None:
        return KEEPALIVE_S
    return min(KEEPALIVE_S, float(found.group(1)) - KEEPALIVE_MARGIN_S)


class Pool:
    """Keep-alive connections to one origin, at most `connections` open at once."""

    def __init__(self, base_url: str, headers: Mapping[str, str], *, connections: int) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{base_url!r} is not an http:// or https:// address")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        name = f"[{self.host}]" if ":" in self.host else self.host
        self.origin = f"{parts.scheme}://{name}" + (f":{parts.port}" if parts.port else "")
        self._prefix = quote(parts.path.rstrip("/"), safe=_PATH_SAFE)
        for key, value in headers.items():
            check_header(key, value)
        self._host_line = f"Host: {name}" + (f":{parts.port}" if parts.port else "")
        self._headers = dict(headers)
        self._names = {key.lower() for key in headers}
        self._head = self._head_of(self._headers)
        self._targets: dict[str, str] = {}
        self._limit = max(connections, 1)
        self._open = 0
        self._idle: list[_Connection] = []
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._ssl: ssl.SSLContext | None = None
        self._closed = False
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]

    def target(self, path: str) -> str:
        """The request target of `path` (relative to the base URL's path)."""
        known = self._targets.get(path)
        if known is None:
            known = self._prefix + "/" + quote(path.lstrip("/"), safe=_PATH_SAFE)
            if len(self._targets) < 64:
                self._targets[path] = known
        return known

    async def request(self, method: str, path: str, body: bytes | None = None,
                      headers: Mapping[str, str] | None = None, *, timeout_s: float,
                      stall_timeout_s: float) -> Response:
        """Send one request and wait for its head; the caller reads the body and releases it."""
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        deadline = self.loop.time() + timeout_s
        target = self.target(path)
        head = [f"{method} {target} HTTP/1.1\r\n".encode(), self._head]
        if headers:
            if self._names.intersection(key.lower() for key in headers):  # one replaced
                mine = {k: v for k, v in self._headers.items()
                        if k.lower() not in {key.lower() for key in headers}}
                head[1] = self._head_of({**mine, **headers})
            else:
                head.append(self._head_of(headers, host=False))
        if body is not None:
            head.append(b"Content-Length: %d\r\n" % len(body))
        head.append(b"\r\n")
        conn = await self._acquire(deadline)
        conn.begin()
        conn.busy = True
        try:
            assert conn.transport is not None
            if body is not None and len(body) < 65536:
                head.append(body)
                conn.transport.write(b"".join(head))
            else:
                conn.transport.writelines(head if body is None else [*head, body])
            while not conn.head_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait(deadline, stall_timeout_s, "answer")
        except BaseException:
            conn.busy = False
            self._back(conn, reuse=False)
            raise
        return Response(conn, self.origin + target, deadline, stall_timeout_s)

    def _head_of(self, headers: Mapping[str, str], *, host: bool = True) -> bytes:
        for key, value in headers.items():
            check_header(key, value)
        lines = [self._host_line] if host else []
        lines += [f"{key}: {value}" for key, value in headers.items()]
        return ("\r\n".join(lines) + "\r\n").encode()

    async def _acquire(self, deadline: float) -> _Connection:
        loop = self.loop
        while True:
            if self._closed:
                raise ConnectFailed("the endpoint is closed")
            while self._idle:
                conn = self._idle.pop()
                if conn.lost or conn.transport is None or conn.transport.is_closing() \
                        or loop.time() - conn.idle_since > conn.idle_limit:
                    conn._close()
                    self._open -= 1
                    continue
                return conn
            if self._open < self._limit:
                self._open += 1
                try:
                    return await self._connect(deadline)
                except BaseException:
                    self._open -= 1
                    self._wake_one()
                    raise
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiting.append(waiter)
            timer = loop.call_at(deadline, _expire, waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.result() is None:
                    self._wake_one()  # woken, then cancelled: the next waiter may go instead
                raise
            finally:
                timer.cancel()
                if waiter in self._waiting:
                    self._waiting.remove(waiter)
            if waiter.result() is False:
                raise TimedOut("no free connection before the request's time limit")

    async def _connect(self, deadline: float) -> _Connection:
        context = self._context() if self.tls else None
        try:
            with anyio.fail_after(max(deadline - self.loop.time(), 0.0)):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=context,
                    server_hostname=self.host if context is not None else None)
        except TimeoutError:
            raise TimedOut(f"no connection to {self.origin} before the request's time "
                           "limit") from None
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConnectFailed(f"cannot connect to {self.origin}: {type(exc).__name__}: "
                                f"{_parser_text(exc)}") from None
        return conn

    def _context(self) -> ssl.SSLContext:
        # built on the first https connection: reading the system's CA certificates is about a
        # fifth of a small run, which a plain-http endpoint never needs
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _back(self, conn: _Connection, *, reuse: bool) -> None:
        if reuse and not self._closed and not conn.lost:
            conn.idle_since = self.loop.time()
            conn.idle_limit = _idle_limit(conn.headers.get("keep-alive"))
            self._idle.append(conn)
        else:
            conn._close()
            self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        for conn in self._idle:
            conn._close()
        self._open -= len(self._idle)
        self._idle.clear()
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
