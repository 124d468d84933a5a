"""``import-xqueue --fetch-files``: submitted files are copied from the URLs upstream gave its graders
(absolute, relative to upstream's MEDIA_URL, or listed in upstream's external file-list document)
into our storage, and graders download them from us. A submission whose files cannot all be fetched
is skipped with the reason, and none of its files stay behind."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from aiohttp import web

from tests.importing.mariadb import LocalMariaDB
from tests.importing.test_upstream_import import import_xqueue
from tests.integration.clients import GraderClient
from xqueue_server.testing import FakeLMS, LoopThread, ServerThread

pytestmark = pytest.mark.slow

FILES = {"/media/files-q/k1": b"print('relative')\n", "/s3/k2": b"absolute \xe2\x9c\x93\n",
         "/s3/k3": b"\x00\x01binary", "/s3/k4": "one of many ✓".encode()}


class FileServer:
    """Upstream's file storage: a real HTTP server on 127.0.0.1."""

    def __init__(self) -> None:
        self.thread = LoopThread("upstream-files")
        self.url = ""
        self.runner: web.AppRunner | None = None
        self.thread.call(self._start())

    async def _start(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            if request.path == "/media/files-q/list":
                return web.json_response({"files": {"a.py": f"{self.url}/s3/k3", "b.txt": f"{self.url}/s3/k4"},
                                          "keys": {"a.py": "k3", "b.txt": "k4"}})
            if request.path in FILES:
                return web.Response(body=FILES[request.path])
            raise web.HTTPNotFound()

        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    def stop(self) -> None:
        if self.runner is not None:
            self.thread.call(self.runner.cleanup())
        self.thread.close()


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    server = FileServer()
    yield server
    server.stop()


def add_submissions_with_files(mariadb: LocalMariaDB, upstream_url: str, lms: FakeLMS, files_url: str) -> None:
    rows = {
        20: {"answer.py": "/media/files-q/k1", "data.txt": f"{files_url}/s3/k2"},
        21: {"URL_FOR_EXTERNAL_DICTS": "/media/files-q/list"},
        22: {"ok.py": f"{files_url}/s3/k2", "gone.py": f"{files_url}/s3/missing?X-Amz-Signature=secret"},
    }
    conn = mariadb.connect(upstream_url.rsplit("/", 1)[1])
    try:
        with conn.cursor() as cur:
            for sid, urls in rows.items():
                callback = lms.callback_url(f"files-{sid}")
                header = json.dumps({"lms_callback_url": callback, "lms_key": f"key-{sid}", "queue_name": "files-q"})
                cur.execute(
                    "INSERT INTO queue_submission (id, requester_id, lms_callback_url, queue_name, xqueue_header,"
                    " xqueue_body, s3_keys, s3_urls, arrival_time, grader_id, pullkey, grader_reply, num_failures,"
                    " lms_ack, retired) VALUES (%s, '', %s, 'files-q', %s, %s, '{}', %s, UTC_TIMESTAMP(6) -"
                    " INTERVAL %s MINUTE, '', '', '', 0, 0, 0)",
                    (sid, callback, header, json.dumps({"id": sid}), json.dumps(urls), 100 - sid))
    finally:
        conn.close()


def stored_files(server: ServerThread) -> list[Path]:
    return [p for p in Path(server.settings.storage_dir or "").rglob("*") if p.is_file()]


def test_fetch_files_into_our_storage(xqueue_factory: Callable[..., ServerThread], fake_lms: FakeLMS,
                                      mariadb: LocalMariaDB, upstream_mysql: str, file_server: FileServer) -> None:
    add_submissions_with_files(mariadb, upstream_mysql, fake_lms, file_server.url)
    server = xqueue_factory()
    env = {"XQUEUE_STORAGE_DIR": server.settings.storage_dir or ""}
    result = import_xqueue(server, upstream_mysql, "--fetch-files", "--files-base-url", file_server.url + "/",
                           "--json", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    imported = {s["upstream_id"] for s in report["submissions"]}
    assert {20, 21} <= imported and 22 not in imported
    reasons = {s["name"]: s["reason"] for s in report["skipped"]}
    assert "HTTP 404" in reasons["#22 (files-q)"] and "secret" not in result.stdout  # no presigned query shown
    # upstream_data's row with a file that upstream's storage no longer has is skipped too.
    assert "could not be fetched: HTTP 404" in reasons["#5 (python-3)"]
    assert len(stored_files(server)) == 4  # 20's two and 21's two: nothing of 22 stays behind

    grader = GraderClient(server)
    got = {}
    for _ in range(2):
        item = grader.pull("files-q")
        assert item is not None
        urls = json.loads(item["xqueue_files"])
        got[json.loads(item["xqueue_body"])["id"]] = {
            name: requests.get(url, timeout=10).content for name, url in urls.items()}
        assert grader.put_result(item["xqueue_header"], {"correct": True, "score": 1, "msg": ""})["return_code"] == 0
    assert got == {20: {"answer.py": FILES["/media/files-q/k1"], "data.txt": FILES["/s3/k2"]},
                   21: {"a.py": FILES["/s3/k3"], "b.txt": FILES["/s3/k4"]}}
    fake_lms.wait_for(lambda cbs: {c.xqueue_header["lms_key"] for c in cbs} >= {"key-20", "key-21"}, timeout=30)

    # Running it again fetches nothing new and leaves no stray copies.
    again = import_xqueue(server, upstream_mysql, "--fetch-files", "--files-base-url", file_server.url + "/",
                          env=env)
    assert again.returncode == 0, again.stderr
    assert "imported 0 account(s), 0 queue(s), 0 submission(s)" in again.stdout, again.stdout
    assert len(stored_files(server)) == 4
