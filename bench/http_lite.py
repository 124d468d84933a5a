"""A minimal HTTP/1.1 keep-alive client and server for the load generator of bench/server_load.py.

The load generator shares the machine with what it measures, so it should cost as little CPU per
request as it can: these speak just the subset the benchmark needs (Content-Length bodies, one
request at a time per connection, a session cookie) with none of a full client's bookkeeping.
Not for anything but the benchmark.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode


class HttpError(RuntimeError):
    pass


class Connection:
    """One keep-alive connection to ``host:port``; remembers the ``sessionid`` cookie it is given."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.cookie = ""
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, method: str, path: str, form: dict[str, str] | None = None) -> tuple[int, bytes]:
        body = urlencode(form).encode() if form is not None else b""
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if self.cookie:
            head.append(f"Cookie: sessionid={self.cookie}")
        if form is not None:
            head += ["Content-Type: application/x-www-form-urlencoded", f"Content-Length: {len(body)}"]
        data = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        for attempt in (1, 2):  # the server may have closed an idle keep-alive connection
            if self._writer is None:
                await self._connect()
            assert self._reader is not None and self._writer is not None
            try:
                self._writer.write(data)
                return await self._read_response()
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _read_response(self) -> tuple[int, bytes]:
        assert self._reader is not None
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            lowered = name.lower()
            if lowered == "content-length":
                length = int(value)
            elif lowered == "transfer-encoding":
                raise HttpError("chunked responses are not supported here")
            elif lowered == "set-cookie" and value.strip().startswith("sessionid="):
                self.cookie = value.strip()[len("sessionid="):].split(";", 1)[0]
        return status, await self._reader.readexactly(length) if length else b""

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


Handler = Callable[[str, bytes], Awaitable[None]]
OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


async def serve(host: str, port: int, handler: Handler) -> asyncio.Server:
    """A server answering every request 200 with an empty body after ``handler(path, body)``."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ", 2)[1]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                await handler(path, body)
                writer.write(OK_RESPONSE)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass  # the benchmark is over; its event loop cancels what is still connected
        finally:
            writer.close()

    return await asyncio.start_server(connection, host, port, backlog=1024)
