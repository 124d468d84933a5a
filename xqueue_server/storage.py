"""File storage for submitted files: a local directory (default) or an S3-compatible bucket.

Graders get URLs they can download: for local storage, URLs served by this server and signed with
an HMAC that expires; for S3, presigned GET URLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Protocol

from .config import Settings
from .logs import error_fields

KEY_PATTERN = re.compile(r"[0-9a-f]{32}")
SIGNATURE_PATTERN = re.compile(r"[0-9a-f]{64}")
EXPIRES_PATTERN = re.compile(r"[0-9]{1,12}")

log = logging.getLogger("xqueue.storage")


class StorageUnavailable(Exception):
    """Writing to the file storage failed (disk, bucket); worth retrying. Its text holds no data."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"file storage unavailable ({type(cause).__name__})")


def new_key() -> str:
    return uuid.uuid4().hex


class Storage(Protocol):
    async def save(self, key: str, data: bytes) -> None: ...

    async def url(self, key: str, base_url: str, ttl_seconds: int) -> str: ...

    async def delete(self, key: str) -> None: ...


def sign(signing_key: str, key: str, expires: int) -> str:
    return hmac.new(signing_key.encode(), f"{key}:{expires}".encode(), hashlib.sha256).hexdigest()


def check_signature(signing_key: str, key: str, expires: str, signature: str, now: float | None = None) -> bool:
    """True when the signature matches and has not expired. Pure, for the download handler.

    The shapes are checked first: these come from an unauthenticated URL, and ``compare_digest``
    raises on non-ASCII strings.
    """
    if not (KEY_PATTERN.fullmatch(key) and EXPIRES_PATTERN.fullmatch(expires)
            and SIGNATURE_PATTERN.fullmatch(signature)):
        return False
    expires_at = int(expires)
    if expires_at < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(sign(signing_key, key, expires_at), signature)


class LocalStorage:
    def __init__(self, root: Path, signing_key: str) -> None:
        self.root = root
        self.signing_key = signing_key
        root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        if not KEY_PATTERN.fullmatch(key):
            raise ValueError("bad storage key")
        return self.root / key[:2] / key

    async def save(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._write, key, data)

    def _write(self, key: str, data: bytes) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            tmp.replace(target)
        except BaseException:
            tmp.unlink(missing_ok=True)  # no half-written file left behind
            raise

    async def url(self, key: str, base_url: str, ttl_seconds: int) -> str:
        expires = int(time.time()) + ttl_seconds
        return f"{base_url}/xqueue/files/{key}?expires={expires}&signature={sign(self.signing_key, key, expires)}"

    async def delete(self, key: str) -> None:
        try:
            self.path(key).unlink(missing_ok=True)
        except ValueError:
            pass


class S3Storage:
    """S3-compatible bucket through boto3 (blocking calls run in a thread)."""

    def __init__(self, settings: Settings) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix.strip("/")
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            config=Config(signature_version="s3v4", retries={"max_attempts": 3, "mode": "standard"}),
        )

    def object_name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    async def save(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self.client.put_object, Bucket=self.bucket, Key=self.object_name(key), Body=data)

    async def url(self, key: str, base_url: str, ttl_seconds: int) -> str:
        return await asyncio.to_thread(
            self.client.generate_presigned_url,
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.object_name(key)},
            ExpiresIn=ttl_seconds,
        )

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.client.delete_object, Bucket=self.bucket, Key=self.object_name(key))


async def discard_files(storage: Storage, keys: Iterable[str]) -> None:
    """Delete stored files, best effort (a failure is logged without the file's name)."""
    for key in keys:
        try:
            await storage.delete(key)
        except Exception as exc:
            log.warning("could not delete a stored file", extra={"fields": {"key": key, "error": type(exc).__name__}})


@contextlib.asynccontextmanager
async def saving_files(storage: Storage, files: dict[str, bytes]) -> AsyncIterator[dict[str, str]]:
    """Reserve a storage key per file, run the body (the database insert), then write the files.

    Use as ``async with saving_files(...) as keys: <insert the row that names keys>``. Files are
    written only after the body succeeded, so a row the database refuses never leaves a file behind;
    if a write fails, the files written so far are deleted and ``StorageUnavailable`` propagates out
    of the ``async with`` (inside the caller's transaction, so the row is rolled back too). Only if
    the connection is lost during the commit itself is the outcome unknown; then the files stay, as
    a committed row may name them.
    """
    keys = {name: new_key() for name in files}
    yield keys
    try:
        for name, data in files.items():
            await storage.save(keys[name], data)
    except BaseException as exc:
        await asyncio.shield(discard_files(storage, keys.values()))
        if isinstance(exc, Exception):
            log.warning("could not store a submitted file", extra={"fields": error_fields(exc)})
            raise StorageUnavailable(exc) from exc
        raise


def make_storage(settings: Settings, signing_key: str) -> Storage:
    if settings.storage == "s3":
        return S3Storage(settings)
    return LocalStorage(settings.resolved_storage_dir, signing_key)
