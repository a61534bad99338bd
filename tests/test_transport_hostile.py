"""The HTTP/1.1 client (`runner.transport`) against servers that attack it: answers split at
every byte, heads and trailers that never end, odd statuses, compressed bodies cut short or in
several members, cancellations at every wait, resets, TLS. Each attack ends as an error of the
right kind (or a whole answer), with memory bounded, the pool's connection count right and no
connection reused in a wrong state. Servers are raw asyncio servers on loopback, as in
tests/test_transport.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import ssl
import struct
import sys
import zlib
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from runner.client import Endpoint
from runner.config import Provider
from runner.transport import (
    HIGH_WATER,
    INFLATE_BLOCK,
    MAX_HEAD_BYTES,
    BadResponse,
    Disconnected,
    Pool,
    Response,
    Stalled,
    TimedOut,
)

from .test_transport import (
    EVENT,
    LAST,
    SSE_HEAD,
    chunk,
    keep_alive,
    provider,
    read_request,
    request,
    send,
    serving,
    streamed,
)

TLS = Path(__file__).resolve().parent / "data" / "tls"
JSON = json.dumps({"choices": [{"message": {"content": "whole"},
                                "finish_reason": "stop"}]}).encode()


def plain(body: bytes, *, head: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%s"
            b"Content-Length: %d\r\n\r\n%s" % (head, len(body), body))


async def read_all(resp: Response) -> bytes:
    parts = []
    while part := await resp.read_any():
        parts.append(part)
    return b"".join(parts)


# ---- answers split at every byte -------------------------------------------------------------

@pytest.mark.parametrize("coding", ["identity", "gzip", "deflate"])
@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_an_answer_split_at_every_byte_is_read_whole(
        write_job: Any, coding: str, framing: str) -> None:
    body = {"identity": JSON, "gzip": gzip.compress(JSON),
            "deflate": zlib.compress(JSON)}[coding]
    coded = b"" if coding == "identity" else b"Content-Encoding: %s\r\n" % coding.encode()
    if framing == "length":
        answer = plain(body, head=coded)
    else:
        answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + coded
                  + b"Transfer-Encoding: chunked\r\n\r\n"
                  + b"".join(chunk(body[i:i + 7]) for i in range(0, len(body), 7))
                  + b"0\r\n\r\n")

    async def bytewise(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader):
            for i in range(len(answer)):
                writer.write(answer[i:i + 1])
                await writer.drain()
                await asyncio.sleep(0)  # each byte its own segment, most of them their own read

    async with serving(bytewise) as server:
        attempts = await send(server, request(write_job, server.url, stream=False), times=2)
    assert [a.text for a in attempts] == ["whole", "whole"]
    assert server.connections == 1


# ---- heads, statuses, trailers ---------------------------------------------------------------

async def test_a_header_line_that_never_ends_is_an_error_not_a_growing_buffer(
        write_job: Any) -> None:
    # httptools gathers a header's value in memory until its line ends: a line that never
    # ends must be refused at the head's bound, not held until the stall limit
    async def endless_header(reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Long: ")
        for _ in range(64):
            writer.write(b"a" * 1024 * 1024)
            await writer.drain()
        await reader.read()  # until the client hangs up

    async with serving(endless_header) as server:
        [attempt] = await send(server, request(write_job, server.url), stall_timeout_s=2)
    assert attempt.error_type == "client_error"
    assert f"larger than {MAX_HEAD_BYTES} bytes" in attempt.error_message


async def test_trailers_that_never_end_are_an_error_not_a_growing_buffer() -> None:
    async def endless_trailer(reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + chunk(EVENT) + chunk(LAST) + b"0\r\nX-Trailer: ")
        for _ in range(64):
            writer.write(b"a" * 1024 * 1024)
            await writer.drain()
        await reader.read()  # until the client hangs up

    async with serving(endless_trailer) as server:
        pool = Pool(server.url, {}, connections=1)
        resp = await pool.request("GET", "x", timeout_s=30, stall_timeout_s=2)
        try:
            with pytest.raises(BadResponse, match=f"{MAX_HEAD_BYTES} bytes"):
                await read_all(resp)
        finally:
            resp.release()
            await pool.aclose()


@pytest.mark.parametrize("status", [b"000", b"042"])
async def test_a_status_below_100_is_an_unreadable_answer(write_job: Any, status: bytes) -> None:
    def odd(_: bytes) -> bytes:
        return plain(JSON).replace(b"200 OK", status + b" Odd")

    async with serving(keep_alive(odd)) as server:
        [attempt] = await send(server, request(write_job, server.url, stream=False),
                               stall_timeout_s=2)
    assert attempt.error_type == "client_error"
    assert attempt.http_status is None


@pytest.mark.parametrize("head", [
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
    b"Content-Length: 5, 5\r\n",
    b"Content-Length: -5\r\n",
])
async def test_an_ambiguous_length_is_an_unreadable_answer(write_job: Any, head: bytes) -> None:
    def ambiguous(_: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + head + b"\r\nhello"

    async with serving(keep_alive(ambiguous)) as server:
        attempts = await send(server, request(write_job, server.url, stream=False), times=2)
    assert [a.error_type for a in attempts] == ["client_error", "client_error"]
    assert server.connections == 2


async def test_a_body_on_a_204_is_never_read_as_the_next_answer() -> None:
    # a 204 has no body whatever its head says; bytes after it are not the next answer, even
    # when they come after the next request was sent
    sent_second = asyncio.Event()

    async def body_on_204(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 38\r\n\r\n")
        await writer.drain()
        if await read_request(reader):  # the client reused this connection
            sent_second.set()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nWRONG")
            await writer.drain()

    async with serving(body_on_204) as server:
        pool = Pool(server.url, {}, connections=1)
        resp = await pool.request("DELETE", "x", timeout_s=10, stall_timeout_s=5)
        assert resp.status == 204 and await read_all(resp) == b""
        await resp.drain()
        resp.release()
        assert not pool._idle  # a 204 that claimed a body is not kept
        await pool.aclose()
    assert not sent_second.is_set()


# ---- early answers, resets, closes -----------------------------------------------------------

async def test_an_answer_before_the_request_body_was_sent_does_not_keep_the_connection() -> None:
    # the server answers 413 after the head without reading the 32 MB body: what is still in
    # the write buffer would be the start of the next request on this connection
    finished = asyncio.Event()

    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 3\r\n\r\nbig")
        await writer.drain()
        await finished.wait()  # reads nothing more

    async with serving(early) as server:
        pool = Pool(server.url, {}, connections=1)
        resp = await pool.request("POST", "files", b"x" * 32 * 1024 * 1024, timeout_s=10,
                                  stall_timeout_s=5)
        assert resp.status == 413 and await read_all(resp) == b"big"
        resp.release()
        assert not pool._idle and pool._open == 0
        await pool.aclose()
        finished.set()


async def test_a_reset_in_an_answer_that_ends_with_the_connection_is_not_its_end() -> None:
    got_first = asyncio.Event()

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + EVENT)
        await writer.drain()
        await got_first.wait()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # an RST, not a FIN: the answer was cut, not ended

    async with serving(reset) as server:
        pool = Pool(server.url, {}, connections=1)
        resp = await pool.request("GET", "x", timeout_s=10, stall_timeout_s=5)
        assert await resp.read_any() == EVENT
        got_first.set()
        try:
            with pytest.raises(Disconnected):
                await read_all(resp)
        finally:
            resp.release()
            await pool.aclose()


async def test_a_hang_up_on_a_reused_connection_is_a_disconnect_before_answering(
        write_job: Any) -> None:
    # the keep-alive race: the server closes an idle connection as the client reuses it (here
    # it reads the second request and hangs up without a word)
    async def one_then_close(reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(streamed(b""))
        await writer.drain()
        await read_request(reader)

    async with serving(one_then_close) as server:
        attempts = await send(server, request(write_job, server.url), times=2, connections=1)
    assert attempts[0].ok
    assert attempts[1].error_type == "disconnect"
    assert "mid-response" not in attempts[1].error_message
    assert "before answering" in attempts[1].error_message


# ---- compressed bodies -----------------------------------------------------------------------

async def test_a_gzip_body_in_several_members_is_read_whole(write_job: Any) -> None:
    packed = gzip.compress(JSON[:20]) + gzip.compress(JSON[20:])

    async with serving(keep_alive(lambda _: plain(packed, head=b"Content-Encoding: gzip\r\n"))
                       ) as server:
        attempts = await send(server, request(write_job, server.url, stream=False), times=2)
    assert [a.text for a in attempts] == ["whole", "whole"]


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_compressed_stream_cut_short_is_an_error(write_job: Any, coding: str) -> None:
    whole = EVENT + LAST
    packed = gzip.compress(whole) if coding == "gzip" else zlib.compress(whole)
    cut = packed[:-12]  # the events are in it, the end of the stream is not

    def answer(_: bytes) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: %s\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (coding.encode(), len(cut), cut))

    async with serving(keep_alive(answer)) as server:
        [attempt] = await send(server, request(write_job, server.url))
    assert attempt.error_type == "client_error" and coding in attempt.error_message


async def test_an_empty_compressed_body_is_empty() -> None:
    async with serving(keep_alive(lambda _: plain(b"", head=b"Content-Encoding: gzip\r\n"))
                       ) as server:
        pool = Pool(server.url, {}, connections=1)
        for _ in range(2):
            resp = await pool.request("GET", "x", timeout_s=10, stall_timeout_s=5)
            assert await read_all(resp) == b""
            resp.release()
        await pool.aclose()
    assert server.connections == 1


# ---- the pool under cancellation -------------------------------------------------------------

async def test_a_waiter_cancelled_as_it_is_woken_passes_the_connection_on() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async with serving(serve) as server:
        pool = Pool(server.url, {}, connections=1)
        first = await pool.request("GET", "x", timeout_s=10, stall_timeout_s=5)
        woken = asyncio.create_task(pool.request("GET", "x", timeout_s=10, stall_timeout_s=5))
        third = asyncio.create_task(pool.request("GET", "x", timeout_s=3, stall_timeout_s=3))
        for _ in range(5):
            await asyncio.sleep(0)  # both wait for the one connection
        assert len(pool._waiting) == 2
        await read_all(first)
        first.release()  # wakes `woken` ...
        woken.cancel()   # ... which is cancelled before it runs
        resp = await third
        assert await read_all(resp) == b"ok"
        resp.release()
        with pytest.raises(asyncio.CancelledError):
            await woken
        assert pool._open == 1
        await pool.aclose()


async def test_cancelled_and_failed_requests_leave_a_limit_one_pool_serving() -> None:
    # every request is cancelled or fails at one of the client's waits: connecting, waiting
    # for a connection, for the head, for the body, for the end
    hang = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while request_ := await read_request(reader):
            if b"/v1/head" in request_:
                await hang.wait()
            elif b"/v1/body" in request_:
                writer.write(SSE_HEAD + chunk(EVENT))
                await writer.drain()
                await hang.wait()
            elif b"/v1/cut" in request_:
                writer.write(SSE_HEAD + chunk(EVENT))
                await writer.drain()
                return
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()

    async def one(pool: Pool, path: str, cancel_after: int | None) -> None:
        task = asyncio.create_task(_read(pool, path))
        if cancel_after is not None:
            for _ in range(cancel_after):
                await asyncio.sleep(0)
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimedOut, Disconnected):
            await task

    async def _read(pool: Pool, path: str) -> None:
        resp = await pool.request("GET", path, timeout_s=0.5, stall_timeout_s=0.5)
        try:
            await read_all(resp)
            await resp.drain()
        finally:
            resp.release()

    async with serving(serve) as server:
        pool = Pool(server.url, {}, connections=1)
        for cancel_after in (0, 1, 2, 3, 5, 8, 13, None):
            await asyncio.gather(*(one(pool, path, cancel_after)
                                   for path in ("head", "body", "cut", "ok", "ok")))
            assert pool._open <= 1 and not pool._waiting
        hang.set()
        resp = await pool.request("GET", "ok", timeout_s=10, stall_timeout_s=5)
        assert await read_all(resp) == b"ok"
        resp.release()
        assert pool._open == 1
        await pool.aclose()
        assert pool._open == 0


# ---- reading pauses, and comes back ----------------------------------------------------------

async def test_a_connection_released_unread_while_paused_reads_the_next_answer() -> None:
    # the last bytes of an answer come in one read that takes the held bytes over HIGH_WATER:
    # reading pauses as the answer completes, and the caller releases it unread
    body = b"x" * (HIGH_WATER + 4096)
    last = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(plain(body)[:-8192])
        await writer.drain()
        await last.wait()
        writer.write(body[-8192:])  # one segment on loopback
        await writer.drain()
        while await read_request(reader):
            writer.write(plain(b"ok"))
            await writer.drain()

    async with serving(serve) as server:
        pool = Pool(server.url, {}, connections=1)
        resp = await pool.request("GET", "big", timeout_s=10, stall_timeout_s=5)
        conn = resp._conn
        deadline = asyncio.get_running_loop().time() + 10
        while sum(map(len, conn.chunks)) < len(body) - 8192:  # (woken by each read)
            await conn.wait(deadline, 5, "data")
        assert not conn.paused
        last.set()
        while not conn.complete:
            await conn.wait(deadline, 5, "data")
        assert conn.paused
        resp.release()  # as `models` does with an odd status: the body is not wanted
        resp = await pool.request("GET", "small", timeout_s=10, stall_timeout_s=2)
        assert await read_all(resp) == b"ok"
        resp.release()
        await pool.aclose()
    assert server.connections == 1


# ---- TLS -------------------------------------------------------------------------------------

async def test_tls_connections_are_reused_and_closed_without_warnings(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(TLS / "cert.pem"))
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(TLS / "cert.pem", TLS / "key.pem")
    served = connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served, connections
        connections += 1
        try:
            while request_ := await read_request(reader):
                served += 1
                if b"/v1/garbage" in request_:
                    writer.write(b"SSH-2.0-nope\r\n\r\n")
                else:
                    writer.write(streamed(b""))
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_side)
    url = f"https://127.0.0.1:{listener.sockets[0].getsockname()[1]}/v1"
    async with listener:
        pool = Pool(url, {}, connections=1)
        for path in ("a", "b", "garbage", "c", "d"):
            try:
                resp = await pool.request("GET", path, timeout_s=10, stall_timeout_s=5)
            except BadResponse:
                assert path == "garbage"
                continue
            try:
                assert EVENT in await read_all(resp)
            finally:
                resp.release()
        await pool.aclose()
    assert served == 5 and connections == 2


# ---- what a redirect may put in a row --------------------------------------------------------

# a credential header's value, mixed case as many keys are (a host name is case-insensitive,
# and a URL parser gives it lower-cased: its redaction must see it as the server wrote it)
KEY = "TESTSECRETqWeRtYuIoPaSdFgHjKlZxCvBnM"


@pytest.mark.parametrize(("location", "shown"), [
    (f"http://{KEY}:pw@evil.example:8443/p?k={KEY}", "http://evil.example:8443"),
    (f"https://{KEY}.evil.example/", "https://***.evil.example"),   # host names keep their case
    (f"http://h\\@{KEY}/", "http://***"),
    (f"http://evil.example:{KEY}/", "an unreadable address"),
    ("http://evil.example:99999/", "an unreadable address"),
    ("//evil.example/x", "http://evil.example"),
    ("http://[::1]:8080/x", "http://[::1]:8080"),
    ("javascript:alert(1)", "an unreadable address"),
])
async def test_a_redirect_shows_only_its_origin_and_never_the_key(
        write_job: Any, location: str, shown: str) -> None:
    def redirect(_: bytes) -> bytes:
        return (b"HTTP/1.1 307 Temporary Redirect\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n"
                % location.encode())

    async with serving(keep_alive(redirect)) as server, \
            Endpoint(Provider("local", server.url, "LOCAL_KEY", {"X-Api-Key": KEY},
                              openrouter=False, stream_usage=True),
                     server.url, "sk-or-v1-TESTSECRET", connections=1) as endpoint:
        attempt = await endpoint.send(request(write_job, server.url), timeout_s=10,
                                      stall_timeout_s=5)
    assert attempt.error_type == "redirect"
    assert attempt.error_message.startswith(f"HTTP 307: redirected to {shown};")
    assert "testsecret" not in attempt.error_message.lower()


async def test_a_body_in_one_byte_chunks_holds_no_more_memory_than_the_bound() -> None:
    # each chunk is a bytes object of its own: a million one-byte chunks held unread weigh
    # some 40 MB, not 1 MB; reading pauses on what is held, not on the body bytes alone
    async def tiny(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"1\r\nx\r\n" * 4 * HIGH_WATER + b"0\r\n\r\n")
        await writer.drain()

    async with serving(tiny) as server:
        pool = Pool(server.url, {}, connections=1)
        resp = await pool.request("GET", "x", timeout_s=30, stall_timeout_s=10)
        conn = resp._conn
        deadline = asyncio.get_running_loop().time() + 30
        while not conn.paused:  # nobody reads: the client holds what it may, then pauses
            await conn.wait(deadline, 10, "data")
        held = sum(sys.getsizeof(piece) for piece in conn.chunks)
        assert held <= 3 * HIGH_WATER  # (what was held, and one read more)
        assert len(await read_all(resp)) == 4 * HIGH_WATER  # and reads on when asked
        resp.release()
        await pool.aclose()


# ---- keep-alive as the server says it ----------------------------------------------------------

@pytest.mark.parametrize(("version", "connection", "kept"), [
    (b"HTTP/1.0", b"keep-alive", True), (b"HTTP/1.0", b"", False),
    (b"HTTP/1.1", b"close", False), (b"HTTP/1.1", b"", True),
])
async def test_a_connection_is_kept_only_when_the_answer_says_so(
        write_job: Any, version: bytes, connection: bytes, kept: bool) -> None:
    def answer(_: bytes) -> bytes:  # the server itself never closes
        head = b"Connection: %s\r\n" % connection if connection else b""
        return plain(JSON, head=head).replace(b"HTTP/1.1", version, 1)

    async with serving(keep_alive(answer)) as server:
        attempts = await send(server, request(write_job, server.url, stream=False), times=3)
    assert [a.text for a in attempts] == ["whole"] * 3
    assert server.connections == (1 if kept else 3)


async def test_requests_cancelled_by_an_anyio_scope_at_every_wait_leave_the_endpoint_serving(
        write_job: Any) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader):
            answer = streamed(b"")
            for at in range(0, len(answer), 50):  # many reads, each a wait of the client
                writer.write(answer[at:at + 50])
                await writer.drain()
                await asyncio.sleep(0)

    async with serving(slow) as server:
        req = request(write_job, server.url)
        async with Endpoint(provider(server.url), server.url, "k", connections=1) as endpoint:
            for steps in range(0, 40, 3):
                async with anyio.create_task_group() as group:
                    for _ in range(3):
                        group.start_soon(partial(endpoint.send, req, timeout_s=10,
                                                 stall_timeout_s=5))
                    for _ in range(steps):
                        await asyncio.sleep(0)
                    group.cancel_scope.cancel()
                pool = endpoint._pool
                assert pool._open <= 1 and not pool._waiting
            after = await endpoint.send(req, timeout_s=10, stall_timeout_s=5)
    assert after.ok and after.text == "hi"


async def test_inflated_bytes_still_inside_the_decompressor_at_a_block_end_are_read() -> None:
    # raw deflate of a little more than INFLATE_BLOCK bytes: the first read stops at the block
    # with all input taken, and the last bytes still inside the decompressor
    body = b"x" * (INFLATE_BLOCK + 100)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    packed = packer.compress(body) + packer.flush()

    async with serving(keep_alive(lambda _: plain(packed, head=b"Content-Encoding: deflate\r\n"))
                       ) as server:
        pool = Pool(server.url, {}, connections=1)
        resp = await pool.request("GET", "x", timeout_s=10, stall_timeout_s=5)
        try:
            assert await read_all(resp) == body
        finally:
            resp.release()
            await pool.aclose()


async def test_a_request_body_the_server_never_reads_is_dropped_when_the_request_ends() -> None:
    # the server takes the head and then neither reads nor answers: when the request ends
    # (stalled), the rest of its 64 MB body is dropped, not sent on while the socket lives
    stalled = asyncio.Event()
    received: list[int] = []
    done = asyncio.Event()

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await stalled.wait()
        size = 0
        try:
            while data := await reader.read(1 << 20):  # now it reads: what is still coming?
                size += len(data)
        except ConnectionError:
            pass
        received.append(size)
        done.set()

    body = b"x" * 64 * 1024 * 1024
    async with serving(deaf) as server:
        pool = Pool(server.url, {}, connections=1)
        with pytest.raises(Stalled):
            await pool.request("POST", "files", body, timeout_s=30, stall_timeout_s=0.3)
        stalled.set()
        await done.wait()
        await pool.aclose()
    assert received[0] < len(body) // 2
    assert pool._open == 0
