"""The runner's HTTP/1.1 client against servers that bend HTTP: kept-alive connections are
reused (also when a stream's closing chunk comes late), a connection that misbehaved is never
reused, heads and encodings are bounded, the connection limit holds, and every odd answer is one
error row of the right kind. Each server is a raw asyncio server on loopback, scripted per test.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from runner.client import Endpoint
from runner.config import Provider, load_job
from runner.plan import Plan
from runner.transport import MAX_HEAD_BYTES, Pool, Stalled

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

EVENT = b'data: {"id":"g","model":"m","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
LAST = (b'data: {"id":"g","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":1,"completion_tokens":1,"cost":0.001}}\n\ndata: [DONE]\n\n')


class Server:
    """A loopback server: `handler` runs once per connection; `connections` counts them."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[Server]:
    server = Server(handler)
    listener = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    server.url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/v1"
    async with listener:
        yield server


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request (head and Content-Length body); b"" when the client closed."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")


def keep_alive(answer: Callable[[bytes], bytes]) -> Handler:
    """A well-behaved keep-alive server answering each request with `answer(request)`."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while request := await read_request(reader):
            writer.write(answer(request))
            await writer.drain()
    return handler


def streamed(_: bytes) -> bytes:
    return SSE_HEAD + chunk(EVENT) + chunk(LAST) + b"0\r\n\r\n"


def provider(url: str) -> Provider:
    return Provider("local", url, "LOCAL_KEY", {}, openrouter=False, stream_usage=True)


def request(write_job: Any, url: str, stream: bool = True) -> Any:
    job = load_job(write_job(f"""
        name: transport
        providers:
          local: {{base_url: "{url}", api_key_env: LOCAL_KEY}}
        models: [{{id: m, provider: local}}]
        prompts: [{{id: p, messages: [{{role: user, content: hi}}]}}]
        params: {{stream: {str(stream).lower()}}}
    """))
    return Plan(job)[0]


async def send(server: Server, req: Any, times: int = 1, connections: int = 4,
               **bounds: Any) -> list[Any]:
    async with Endpoint(provider(server.url), server.url, "sk-or-v1-TESTSECRET",
                        connections=connections) as endpoint:
        bounds = {"timeout_s": 10, "stall_timeout_s": 5, **bounds}
        return [await endpoint.send(req, **bounds) for _ in range(times)]


async def test_one_connection_serves_request_after_request(write_job: Any) -> None:
    async with serving(keep_alive(streamed)) as server:
        attempts = await send(server, request(write_job, server.url), times=5)
    assert all(a.ok and a.text == "hi" for a in attempts)
    assert server.connections == 1


async def test_a_closing_chunk_that_comes_after_the_done_keeps_the_connection(
        write_job: Any) -> None:
    async def late_end(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader):
            writer.write(SSE_HEAD + chunk(EVENT) + chunk(LAST))
            await writer.drain()
            await asyncio.sleep(0.01)  # the reader has its [DONE] and has moved on
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async with serving(late_end) as server:
        attempts = await send(server, request(write_job, server.url), times=3)
    assert all(a.ok for a in attempts)
    assert server.connections == 1


async def test_a_closing_chunk_that_never_comes_costs_the_connection_not_the_row(
        write_job: Any) -> None:
    async def no_end(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader):
            writer.write(SSE_HEAD + chunk(EVENT) + chunk(LAST))
            await writer.drain()

    async with serving(no_end) as server:
        attempts = await send(server, request(write_job, server.url), times=3, connections=1)
    assert all(a.ok for a in attempts)
    assert server.connections == 3  # each one given up after its wait, none reused


async def test_a_second_answer_to_one_request_is_not_read_as_the_next_one(
        write_job: Any) -> None:
    async def twice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader):
            body = b'{"choices":[{"message":{"content":"A"},"finish_reason":"stop"}]}'
            answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            writer.write(answer + answer.replace(b'"A"', b'"B"'))
            await writer.drain()

    async with serving(twice) as server:
        attempts = await send(server, request(write_job, server.url, stream=False), times=3)
    assert [a.text for a in attempts] == ["A", "A", "A"]
    assert server.connections == 3


async def test_bytes_on_an_idle_connection_retire_it(write_job: Any) -> None:
    retired = asyncio.Event()  # the client closed the connection the bytes came on

    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader):
            writer.write(streamed(b""))
            await writer.drain()
            if server.connections == 1:
                await asyncio.sleep(0.02)  # (most likely after the client is done reading)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")  # unasked
        retired.set()

    async with serving(chatty) as server:
        req = request(write_job, server.url)
        async with Endpoint(provider(server.url), server.url, "k", connections=1) as endpoint:
            first = await endpoint.send(req, timeout_s=10, stall_timeout_s=5)
            await asyncio.wait_for(retired.wait(), 10)
            second = await endpoint.send(req, timeout_s=10, stall_timeout_s=5)
    assert first.ok and second.ok and second.text == "hi"
    assert server.connections == 2


async def test_the_connection_limit_holds_under_load(write_job: Any) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader):
            await asyncio.sleep(0.01)
            writer.write(streamed(b""))
            await writer.drain()

    async with serving(slow) as server:
        req = request(write_job, server.url)
        async with Endpoint(provider(server.url), server.url, "k", connections=3) as endpoint:
            attempts = await asyncio.gather(*(endpoint.send(req, timeout_s=10,
                                                            stall_timeout_s=5)
                                              for _ in range(30)))
    assert all(a.ok for a in attempts)
    assert server.most_open <= 3 and server.connections <= 3


async def test_a_cancelled_request_leaves_no_half_read_connection(write_job: Any) -> None:
    async def first_hangs(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        while await read_request(reader):
            served += 1
            if served == 1 and server.connections == 1:
                writer.write(SSE_HEAD + chunk(EVENT))  # and then nothing, on this request
                await writer.drain()
                continue
            writer.write(streamed(b""))
            await writer.drain()

    async with serving(first_hangs) as server:
        req = request(write_job, server.url)
        async with Endpoint(provider(server.url), server.url, "k", connections=1) as endpoint:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await endpoint.send(req, timeout_s=10, stall_timeout_s=5)
            after = await endpoint.send(req, timeout_s=10, stall_timeout_s=5)
    assert after.ok and after.text == "hi"
    assert server.connections == 2


@pytest.mark.parametrize("informational", [1, 3])
async def test_informational_heads_before_the_answer_are_skipped(
        write_job: Any, informational: int) -> None:
    def answer(_: bytes) -> bytes:
        return b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" * informational + streamed(b"")

    async with serving(keep_alive(answer)) as server:
        attempts = await send(server, request(write_job, server.url), times=2)
    assert all(a.ok and a.text == "hi" for a in attempts)


async def test_endless_informational_heads_are_an_error_row(write_job: Any) -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        for _ in range(1000):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0)

    async with serving(endless) as server:
        [attempt] = await send(server, request(write_job, server.url))
    assert attempt.error_type == "client_error" and "informational" in attempt.error_message


@pytest.mark.parametrize("how", ["one-header", "many-headers"])
async def test_a_head_past_its_bound_is_an_error_row(write_job: Any, how: str) -> None:
    async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        if how == "one-header":
            writer.write(b"X-Big: " + b"a" * (MAX_HEAD_BYTES + 10) + b"\r\n")
        else:
            for i in range(10_000):
                writer.write(b"X-%d: abcdefgh\r\n" % i)
        writer.write(b"\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async with serving(huge) as server:
        [attempt] = await send(server, request(write_job, server.url))
    assert attempt.error_type == "client_error"
    assert f"larger than {MAX_HEAD_BYTES} bytes" in attempt.error_message


async def test_a_head_that_never_ends_is_a_stall(write_job: Any) -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n")
        await writer.drain()
        await asyncio.sleep(10)

    async with serving(trickle) as server:
        [attempt] = await send(server, request(write_job, server.url), stall_timeout_s=0.2)
    assert attempt.error_type == "stall"


@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw-deflate"])
async def test_compressed_answers_are_read(write_job: Any, coding: str) -> None:
    body = json.dumps({"choices": [{"message": {"content": "zipped"},
                                    "finish_reason": "stop"}]}).encode()
    packed = gzip.compress(body) if coding == "gzip" else zlib.compress(body) \
        if coding == "deflate" else zlib.compress(body)[2:-4]
    name = b"gzip" if coding == "gzip" else b"deflate"

    def answer(_: bytes) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: %s\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (name, len(packed), packed))

    async with serving(keep_alive(answer)) as server:
        attempts = await send(server, request(write_job, server.url, stream=False), times=2)
    assert [a.text for a in attempts] == ["zipped", "zipped"]
    assert server.connections == 1


@pytest.mark.parametrize("coding", [b"br", b"zstd", b"gzip"])
async def test_an_encoding_not_read_or_not_valid_is_an_error_row(write_job: Any,
                                                                 coding: bytes) -> None:
    def answer(_: bytes) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: %s\r\n"
                b"Content-Length: 9\r\n\r\nnot-gzip!" % coding)

    async with serving(keep_alive(answer)) as server:
        [attempt] = await send(server, request(write_job, server.url, stream=False))
    assert attempt.error_type == "client_error" and coding.decode() in attempt.error_message


async def test_an_answer_that_ends_with_the_connection_is_whole(write_job: Any) -> None:
    async def http10(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + EVENT
                     + LAST)
        await writer.drain()

    async with serving(http10) as server:
        attempts = await send(server, request(write_job, server.url), times=2)
    assert all(a.ok and a.text == "hi" for a in attempts)
    assert server.connections == 2


async def test_not_http_is_an_error_row_and_the_connection_is_dropped(write_job: Any) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader):
            writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
            await writer.drain()

    async with serving(garbage) as server:
        attempts = await send(server, request(write_job, server.url), times=2)
    assert [a.error_type for a in attempts] == ["client_error", "client_error"]
    assert "unreadable HTTP" in attempts[0].error_message
    assert server.connections == 2


async def test_a_gzip_bomb_is_read_only_as_far_as_the_bound(write_job: Any) -> None:
    bomb = gzip.compress(b"data: " + b"x" * 50_000_000 + b"\n\n", compresslevel=9)

    def answer(_: bytes) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip"
                b"\r\nContent-Length: %d\r\n\r\n%s" % (len(bomb), bomb))

    async with serving(keep_alive(answer)) as server:
        [attempt] = await send(server, request(write_job, server.url),
                               max_response_bytes=3_000_000)
    assert attempt.error_type == "too_large"


async def test_the_pool_raises_its_own_errors_for_a_stalled_head() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async with serving(silent) as server:
        pool = Pool(server.url, {"Authorization": "Bearer k"}, connections=1)
        with pytest.raises(Stalled):
            await pool.request("GET", "models", timeout_s=5, stall_timeout_s=0.1)
        await pool.aclose()


def test_a_header_that_would_add_a_line_is_refused() -> None:
    with pytest.raises(ValueError, match="line break"):
        Pool("http://127.0.0.1:9/v1", {"X-Title": "a\r\nX-Evil: 1"}, connections=1)
    with pytest.raises(ValueError, match="not a valid HTTP header name"):
        Pool("http://127.0.0.1:9/v1", {"X Title": "a"}, connections=1)  # not a token


@pytest.mark.parametrize(("header", "connections"), [(b"timeout=1", 2), (b"timeout=30", 1),
                                                      (b"max=100", 1)])
async def test_a_connection_idles_less_than_the_server_keeps_it(
        write_job: Any, header: bytes, connections: int) -> None:
    # a server that keeps an idle connection 1 s (Node's is 5) may close it under the next
    # request: the client does not reuse one past what the server said, less a margin
    def answer(_: bytes) -> bytes:
        return streamed(b"").replace(b"\r\n\r\n", b"\r\nKeep-Alive: %s\r\n\r\n" % header, 1)

    async with serving(keep_alive(answer)) as server:
        attempts = await send(server, request(write_job, server.url), times=2)
    assert all(a.ok for a in attempts)
    assert server.connections == connections


async def test_an_answer_released_twice_or_read_after_release_leaves_the_next_one_alone() -> None:
    async with serving(keep_alive(streamed)) as server:
        pool = Pool(server.url, {}, connections=1)
        first = await pool.request("GET", "a", timeout_s=10, stall_timeout_s=5)
        while await first.read_any():
            pass
        first.release()
        second = await pool.request("GET", "b", timeout_s=10, stall_timeout_s=5)
        first.release()  # late: the connection now carries the second answer
        with pytest.raises(RuntimeError, match="after release"):
            await first.read_any()
        body = b""
        while chunk := await second.read_any():
            body += chunk
        second.release()
        await pool.aclose()
    assert body.endswith(b"data: [DONE]\n\n") and server.connections == 1
