"""Refuse request bodies larger than a byte limit before the app parses them.

A declared ``Content-Length`` over the limit is refused without handing anything to the app. Otherwise
(chunked uploads have no length, and a length can lie) the body is read and counted as it arrives, and
refused as soon as the count passes the limit; a body within the limit is handed to the app unchanged. Bodies
are small (the limit defaults to 1 MB) and the app would buffer them anyway to parse the JSON.

Before refusing, up to `DRAIN_FACTOR` times the limit of the body is read and thrown away: closing a socket
with unread data makes the kernel send a reset, which can reach the client before the 413 does, so a client
would see "connection reset" instead of the answer. Larger bodies are cut off at once.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DRAIN_FACTOR = 8  # bytes read and discarded before a 413, in multiples of the limit


class BodySizeLimit:
    """ASGI middleware: 413 with the server's error shape for bodies over `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            if int(declared) <= DRAIN_FACTOR * self.max_bytes:
                await self._drain(receive, 0)
            await self._refuse(send, f"Content-Length {int(declared)}")
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away; nobody to answer
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                if message.get("more_body", False):
                    await self._drain(receive, size)
                await self._refuse(send, f"more than {self.max_bytes} bytes received")
                return
            messages.append(message)
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _drain(self, receive: Receive, size: int) -> None:
        """Read and discard the rest of the body, up to DRAIN_FACTOR times the limit in all."""
        while size <= DRAIN_FACTOR * self.max_bytes:
            message = await receive()
            size += len(message.get("body", b""))
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                return

    async def _refuse(self, send: Send, seen: str) -> None:
        body = json.dumps(
            {
                "error": "body_too_large",
                "detail": f"request body too large ({seen}); the limit is {self.max_bytes} bytes "
                "(--max-body-bytes): send fewer items or shorter contexts",
            },
            separators=(",", ":"),
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
