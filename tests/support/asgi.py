"""One HTTP request through an ASGI app, in-process: the app tests' client."""

from __future__ import annotations

import asyncio


def call(
    app, method: str, path: str, body: bytes = b"", headers: list[tuple[str, str]] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request through the ASGI interface: (status, headers, body)."""

    async def run() -> tuple[int, dict[str, str], bytes]:
        incoming = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict] = []

        async def receive() -> dict:
            return incoming.pop(0) if incoming else {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(k.encode(), v.encode()) for k, v in headers or []],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8080),
        }
        await app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, content

    return asyncio.run(run())
