"""Framing between the daemon and a run's supervisor: 8-byte big-endian length + JSON."""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

HEADER = struct.Struct(">Q")
# A request carries at most a submission, a grader and an answer; a reply at most the results
# channel plus capped output.  Anything larger is a bug or an attack.
MAX_FRAME = 64 * 1024 * 1024


def encode(document: dict[str, Any]) -> bytes:
    body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")
    return HEADER.pack(len(body)) + body


def decode_length(header: bytes) -> int:
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes exceeds the limit")
    return int(length)


def decode(body: bytes) -> dict[str, Any]:
    document = json.loads(body.decode("utf-8", "replace"))
    if not isinstance(document, dict):
        raise ValueError("frame is not a JSON object")
    return document


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    remaining = size
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            raise EOFError("connection closed mid-frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket) -> dict[str, Any]:
    length = decode_length(_recv_exactly(sock, HEADER.size))
    return decode(_recv_exactly(sock, length))


def send_frame(sock: socket.socket, document: dict[str, Any]) -> None:
    sock.sendall(encode(document))
