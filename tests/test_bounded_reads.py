"""Every network read is bounded: error bodies, API answers, reference images and
downloads that never end. A tiny HTTP server on 127.0.0.1 (real sockets) serves bodies far
larger than any cap and counts the bytes it got to send on each connection; what a client
did not read stays in the kernel's socket buffers (a few MiB at most), so a count far below
the body's size shows the body was not read whole."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from providers import http
from providers.errors import (
    InvalidRequestError,
    TransientError,
    UnconfirmedSubmitError,
)
from providers.gemini import IMAGE_MAX, GeminiProvider
from providers.types import Job
from tests.provider_kit import FAST_POLL, request_for

MiB = 1024 * 1024
SLACK = 8 * MiB  # socket buffers on both ends of a loopback connection, generously
FAST = http.RetryPolicy(attempts=3, submit_attempts=2, base_delay=0.01, max_delay=0.02)

Handler = Callable[["Conn"], Awaitable[None]]


@dataclass
class Conn:
    writer: asyncio.StreamWriter
    path: str
    sent: int = 0

    async def head(self, status: int, headers: dict[str, str]) -> None:
        lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()

    async def body(self, size: int, byte: bytes = b"x", chunked: bool = False,
                   delay: float = 0.0, step: int = 64 * 1024) -> None:
        """`size` bytes of `byte` (JSON-ish when it opens a string), until the client goes."""
        while self.sent < size:
            n = min(step, size - self.sent)
            data = byte * n
            self.writer.write(f"{n:x}\r\n".encode() + data + b"\r\n" if chunked else data)
            await self.writer.drain()
            self.sent += n
            if delay:
                await asyncio.sleep(delay)
        if chunked:
            self.writer.write(b"0\r\n\r\n")
            await self.writer.drain()


@dataclass
class Server:
    url: str
    routes: dict[str, Handler]
    conns: list[Conn] = field(default_factory=list)

    def sent(self, path: str) -> list[int]:
        return [c.sent for c in self.conns if c.path.startswith(path)]


@pytest_asyncio.fixture(loop_scope="function")  # the tests' loop, not the session's
async def server() -> AsyncIterator[Server]:
    srv = Server("", {})

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            length = next((int(line.split(":", 1)[1]) for line in head.split("\r\n")
                           if line.lower().startswith("content-length:")), 0)
            if length:
                await reader.readexactly(length)
            path = head.split(" ", 2)[1]
            conn = Conn(writer, path)
            srv.conns.append(conn)
            route = next((h for p, h in srv.routes.items() if path.startswith(p)), None)
            if route is None:
                await conn.head(404, {"Content-Length": "0"})
            else:
                await route(conn)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up: what the tests want to see
        finally:
            writer.close()

    tcp = await asyncio.start_server(serve, "127.0.0.1", 0)
    srv.url = f"http://127.0.0.1:{tcp.sockets[0].getsockname()[1]}"
    try:
        yield srv
    finally:
        tcp.close()


def huge_error(conn: Conn) -> Awaitable[None]:
    async def go() -> None:
        await conn.head(500, {"Content-Length": str(300 * MiB), "Content-Type": "text/plain"})
        await conn.body(300 * MiB)
    return go()


async def test_a_300_mib_error_body_of_a_download_is_not_read(server: Server,
                                                              tmp_path: Path) -> None:
    """The clip URL answers HTTP 500 with 300 MiB: each attempt reads 64 KiB of it and hangs
    up (the old code read it whole, six times, with the clip cap at 10 MiB)."""
    server.routes["/clip"] = huge_error
    async with httpx.AsyncClient(timeout=10) as client:
        t0 = time.monotonic()
        with pytest.raises(TransientError, match="HTTP 500"):
            await http.download(client, f"{server.url}/clip.mp4", tmp_path / "c.mp4",
                                provider="x", max_bytes=10 * MiB, policy=FAST)
    sent = server.sent("/clip")
    assert len(sent) == FAST.attempts  # retried as a 5xx, each time cut short
    assert max(sent) < SLACK, sent
    assert time.monotonic() - t0 < 10
    assert not (tmp_path / "c.mp4").exists()


async def test_an_api_error_body_is_read_up_to_64_kib(server: Server) -> None:
    server.routes["/v1beta/"] = huge_error
    async with httpx.AsyncClient(timeout=10) as client:
        p = GeminiProvider(client=client, key="k", base_url=server.url, poll=FAST_POLL,
                           retry=FAST)
        with pytest.raises(TransientError, match="HTTP 500") as info:
            await p.poll(Job("gemini", "op1", {"operation": "models/veo/operations/op1"}))
    assert len(str(info.value)) < 2000  # quoted, shortened
    assert max(server.sent("/v1beta/")) < SLACK


def endless_json(declared: bool) -> Handler:
    async def go(conn: Conn) -> None:
        headers = {"Content-Type": "application/json"}
        headers.update({"Content-Length": str(300 * MiB)} if declared else
                       {"Transfer-Encoding": "chunked"})
        await conn.head(200, headers)
        await conn.body(300 * MiB, chunked=not declared)
    return go


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_an_answer_over_the_cap_is_an_error(server: Server, declared: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A poll answered with 300 MiB: transient (the job stays as it was: the money code keeps
    it at risk), after reading at most the cap; a submit: unconfirmed (it may have been
    taken). Never a MemoryError."""
    monkeypatch.setenv("STORYREEL_MAX_ANSWER_BYTES", str(MiB))
    server.routes["/v1beta/"] = endless_json(declared)
    async with httpx.AsyncClient(timeout=10) as client:
        p = GeminiProvider(client=client, key="k", base_url=server.url, poll=FAST_POLL,
                           retry=FAST)
        job = Job("gemini", "op1", {"operation": "models/veo/operations/op1"})
        with pytest.raises(TransientError, match="more than 1048576 bytes") as info:
            await p.wait(job)
        assert info.value.job_id == "op1" and not info.value.may_have_charged
        polls = len(server.conns)
        assert polls == FAST.attempts  # retried like any transient poll failure
        with pytest.raises(UnconfirmedSubmitError, match="more than") as sub:
            await p.submit(request_for("gemini"))
        assert sub.value.may_have_charged
        assert len(server.conns) == polls + 1  # a paid submit is never resent
    assert max(c.sent for c in server.conns) < MiB + SLACK
    if declared:  # over the cap by its own account: not read at all
        assert max(c.sent for c in server.conns) < SLACK


async def test_the_default_answer_cap_is_4_mib(server: Server) -> None:
    async def answer(conn: Conn) -> None:
        body = b'{"done": false, "pad": "' + b"x" * (5 * MiB) + b'"}'
        await conn.head(200, {"Content-Type": "application/json",
                              "Content-Length": str(len(body))})
        conn.writer.write(body)
        await conn.writer.drain()
        conn.sent = len(body)

    server.routes["/ok"] = answer
    async with httpx.AsyncClient(timeout=10) as client:
        with pytest.raises(TransientError, match="more than 4194304 bytes"):
            await http.send(client, "GET", f"{server.url}/ok", stage="poll", provider="x",
                            map_error=lambda r, s: TransientError("no"), policy=FAST)


async def test_a_download_that_drips_ends_within_its_wall_clock(
        server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A byte every 0.1 s never trips a read timeout; the download's wall clock
    (STORYREEL_DOWNLOAD_MAX_S, here 1.5 s) ends it, retries included, and nothing is left."""
    async def drip(conn: Conn) -> None:
        await conn.head(200, {"Content-Type": "video/mp4", "Content-Length": "100000"})
        await conn.body(100000, byte=b"\0", delay=0.1, step=1)

    server.routes["/drip"] = drip
    monkeypatch.setenv("STORYREEL_DOWNLOAD_MAX_S", "1.5")
    async with httpx.AsyncClient(timeout=1.0) as client:
        t0 = time.monotonic()
        with pytest.raises(TransientError, match="STORYREEL_DOWNLOAD_MAX_S"):
            await asyncio.wait_for(
                http.download(client, f"{server.url}/drip.mp4", tmp_path / "d.mp4",
                              provider="x", policy=FAST), 20)
        took = time.monotonic() - t0
    assert 1.4 < took < 4, took
    assert len(server.conns) == 1  # the time is spent: not retried
    assert not list(tmp_path.iterdir())


def test_the_download_wall_clock_scales_with_the_clip_cap(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STORYREEL_DOWNLOAD_MAX_S", raising=False)
    small, large = http.download_time_limit(10 * MiB), http.download_time_limit(1024 * MiB)
    assert 60 <= small < large < 3600
    monkeypatch.setenv("STORYREEL_DOWNLOAD_MAX_S", "7")
    assert http.download_time_limit(1024 * MiB) == 7


def big_image(declared: bool, size: int) -> Handler:
    async def go(conn: Conn) -> None:
        headers = {"Content-Type": "image/png"}
        headers.update({"Content-Length": str(size)} if declared else
                       {"Transfer-Encoding": "chunked"})
        await conn.head(200, headers)
        await conn.body(size, byte=b"\x89", chunked=not declared)
    return go


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_gemini_reference_image_over_20_mb_is_refused_while_it_arrives(
        server: Server, declared: bool) -> None:
    """Veo takes images inline, so a URL image is fetched: one of 100 MB is refused after at
    most 20 MB + 1 byte (nothing, when its length says so), not read whole first, and not
    fetched again (it would be as big again)."""
    server.routes["/img"] = big_image(declared, 100 * MiB)
    async with httpx.AsyncClient(timeout=10) as client:
        p = GeminiProvider(client=client, key="k", base_url=server.url, poll=FAST_POLL,
                           retry=FAST)
        req = request_for("gemini", image=f"{server.url}/img.png")
        with pytest.raises(InvalidRequestError, match="over 20 MB"):
            await p.build_body(req)
    sent = server.sent("/img")
    assert len(sent) == 1
    assert sent[0] < (SLACK if declared else IMAGE_MAX + SLACK), sent


async def test_a_gemini_reference_image_under_the_cap_is_inlined(server: Server) -> None:
    server.routes["/img"] = big_image(False, 3 * MiB)
    async with httpx.AsyncClient(timeout=10) as client:
        p = GeminiProvider(client=client, key="k", base_url=server.url, poll=FAST_POLL,
                           retry=FAST)
        body = await p.build_body(request_for("gemini", image=f"{server.url}/img.png"))
    image = body["instances"][0]["image"]
    assert image["mimeType"] == "image/png"
    assert len(image["bytesBase64Encoded"]) == 4 * MiB  # 3 MiB, base64
