"""Fetching the files of imported submissions (``import-xqueue --fetch-files``) from the URLs upstream
XQueue gave its graders, into our own storage. Upstream's URLs stop working with upstream (its local
storage is served by its own Django, its S3 links expire), so the files are copied while they answer.

A submission is imported with all its files or not at all: when one file cannot be fetched, the ones
already stored for it are deleted and the submission is reported as skipped with the reason.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp

from .storage import Storage, discard_files, new_key
from .upstream_import import EXTERNAL_DICT_NAME, PlannedSubmission, resolve_file_url

CONCURRENCY = 8  # submissions fetched at once: upstream's file server is not ours to overload
MAX_EXTERNAL_DICT_BYTES = 1_000_000


class FetchFailed(Exception):
    """One file could not be fetched; the message is for the report (no credentials in it)."""


async def _get(session: aiohttp.ClientSession, url: str, max_bytes: int) -> bytes:
    try:
        async with session.get(url, allow_redirects=True) as response:
            if response.status != 200:
                raise FetchFailed(f"HTTP {response.status} from {_shown(url)}")
            data = bytearray()
            async for chunk in response.content.iter_chunked(65536):
                data.extend(chunk)
                if len(data) > max_bytes:
                    raise FetchFailed(f"{_shown(url)} is larger than {max_bytes} bytes")
            return bytes(data)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise FetchFailed(f"{_shown(url)}: {type(exc).__name__}") from None


def _shown(url: str) -> str:
    # Presigned URLs carry credentials in their query string: never print it.
    return url.split("?", 1)[0]


async def _file_urls(session: aiohttp.ClientSession, sub: PlannedSubmission, base_url: str | None) -> dict[str, str]:
    urls = dict(sub.file_urls)
    if set(urls) == {EXTERNAL_DICT_NAME}:
        # Too many files for upstream's column: it stored their list as a JSON document.
        where = resolve_file_url(urls[EXTERNAL_DICT_NAME], base_url)
        if where is None:
            raise FetchFailed("the file list URL is not absolute (give --files-base-url)")
        try:
            listed = json.loads(await _get(session, where, MAX_EXTERNAL_DICT_BYTES))
        except ValueError:
            raise FetchFailed(f"the file list at {_shown(where)} is not JSON") from None
        files = listed.get("files") if isinstance(listed, dict) else None
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise FetchFailed(f"the file list at {_shown(where)} has no files object")
        urls = files
    return urls


async def _fetch_one(session: aiohttp.ClientSession, storage: Storage, sub: PlannedSubmission,
                     base_url: str | None, max_bytes: int) -> dict[str, str]:
    stored: dict[str, str] = {}
    try:
        for name, url in (await _file_urls(session, sub, base_url)).items():
            absolute = resolve_file_url(url, base_url)
            if absolute is None:
                raise FetchFailed(f"the URL of {name!r} is not absolute (give --files-base-url)")
            data = await _get(session, absolute, max_bytes)
            key = new_key()
            await storage.save(key, data)
            stored[name] = key
    except BaseException:
        await asyncio.shield(discard_files(storage, stored.values()))
        raise
    return stored


async def fetch_files(submissions: list[PlannedSubmission], storage: Storage, *, base_url: str | None,
                      max_bytes: int, timeout_seconds: float = 60) -> tuple[dict[int, dict[str, str]], dict[int, str]]:
    """({upstream id: {filename: storage key}}, {upstream id: why its files could not be fetched})."""
    stored: dict[int, dict[str, str]] = {}
    failed: dict[int, str] = {}
    gate = asyncio.Semaphore(CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=timeout_seconds, sock_connect=10)

    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def one(sub: PlannedSubmission) -> None:
            async with gate:
                try:
                    stored[sub.upstream_id] = await _fetch_one(session, storage, sub, base_url, max_bytes)
                except FetchFailed as exc:
                    failed[sub.upstream_id] = str(exc)
                except Exception as exc:  # the storage refused: reported, the import goes on
                    failed[sub.upstream_id] = f"could not store it here ({type(exc).__name__})"

        await asyncio.gather(*(one(s) for s in submissions if s.file_urls))
    return stored, failed
