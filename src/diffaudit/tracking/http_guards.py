"""ASGI guards in front of MLflow's scoring app, which has none of its own: the Host header (DNS
rebinding: a web page's script can reach a loopback server under a name it controls), the body size
(a 12 MB body was parsed for 15 s before the model refused it) and a deadline per request (see
request_deadline). Each answers in JSON, like the scoring server.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from diffaudit.tracking import request_deadline

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_BODY_BYTES = 1024 * 1024  # 1024 rows of (label, guidance_scale, seed) is about 60 kB of JSON


async def _answer(send: Send, status: int, error_code: str, message: str) -> None:
    body = json.dumps({"error_code": error_code, "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def host_name(header: str) -> str:
    """The name in a Host header, port and IPv6 brackets off, lower case: `[::1]:5001` -> `::1`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostGuard:
    """400 for a Host header not in `allowed` (names, or `*` for any; `*.example.org` for subdomains)."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = tuple(host_name(h) if h != "*" else h for h in allowed)
        if not self.allowed:
            raise ValueError("allowed hosts must name at least one host (or `*` for any)")

    def admits(self, header: str | None) -> bool:
        if "*" in self.allowed:
            return True
        name = host_name(header or "")
        return any(name == h or (h.startswith("*.") and name.endswith(h[1:])) for h in self.allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.admits(_header(scope, b"host")):
            names = ", ".join(self.allowed)
            await _answer(
                send,
                400,
                "INVALID_PARAMETER_VALUE",
                f"Host {_header(scope, b'host')!r} is not allowed; allowed hosts: {names} "
                "(make serve SERVE_ALLOWED_HOSTS=<names>)",
            )
            return
        await self.app(scope, receive, send)


class BodyLimit:
    """413 for a body over `limit` bytes: by its Content-Length before a byte is read, and for a chunked
    body as soon as it passes the limit (it is read here and handed on whole)."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    def _too_large(self, size: int | str) -> str:
        return f"request body of {size} bytes is over the limit of {self.limit} bytes: send fewer rows"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                await _answer(send, 400, "BAD_REQUEST", f"Content-Length {length!r} is not a byte count")
                return
            if int(length) > self.limit:
                await _answer(send, 413, "REQUEST_LIMIT_EXCEEDED", self._too_large(int(length)))
                return
            await self.app(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                await _answer(send, 413, "REQUEST_LIMIT_EXCEEDED", self._too_large(f"more than {self.limit}"))
                return
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class Deadline:
    """Give each request `seconds` (the scoring server's timeout): the model stops at its next step."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with request_deadline.deadline(self.seconds):
            await self.app(scope, receive, send)
