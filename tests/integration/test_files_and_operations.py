"""File storage (local signed URLs, S3 against a real S3-compatible server on 127.0.0.1), retention,
health, readiness and metrics."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from tests.integration.clients import GRADE, GraderClient, LMSClient
from tests.waiting import wait_until_blocking
from xqueue_server.local_pg import free_port
from xqueue_server.testing import FakeLMS, ServerThread


def test_signed_file_url_rejects_tampering_and_expiry(xqueue_factory: Any, fake_lms: FakeLMS) -> None:
    server = xqueue_factory(file_url_ttl_seconds=2)
    LMSClient(server).submit("test-pull", fake_lms.callback_url("f"), files={"a.txt": b"secret data"})
    item = GraderClient(server).pull("test-pull")
    assert item is not None
    url = json.loads(item["xqueue_files"])["a.txt"]
    assert requests.get(url, timeout=10).content == b"secret data"
    tampered = url[:-4] + ("0000" if not url.endswith("0000") else "1111")
    assert requests.get(tampered, timeout=10).status_code == 403
    unsigned = url.split("?")[0]
    assert requests.get(unsigned, timeout=10).status_code == 403
    time.sleep(2.5)
    assert requests.get(url, timeout=10).status_code == 403  # expired


@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="xqueue-files")
    yield endpoint
    server.stop()


def test_s3_storage_stores_files_and_hands_out_presigned_urls(xqueue_factory: Any, fake_lms: FakeLMS,
                                                              s3_server: str) -> None:
    server = xqueue_factory(storage="s3", s3_bucket="xqueue-files", s3_endpoint_url=s3_server,
                            s3_region="us-east-1", s3_prefix="xq")
    files = {"main.py": b"print('hello')\n", "notes.md": b"# notes"}
    LMSClient(server).submit("test-pull", fake_lms.callback_url("s3"), files=files)
    objects = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").list_objects_v2(
        Bucket="xqueue-files")
    names = [o["Key"] for o in objects.get("Contents", [])]
    assert len(names) == 2 and all(n.startswith("xq/") for n in names)
    item = GraderClient(server).pull("test-pull")
    assert item is not None
    urls = json.loads(item["xqueue_files"])
    for name, url in urls.items():
        assert url.startswith(s3_server) and "Signature" in url
        assert requests.get(url, timeout=10).content == files[name]
    # Without the signature the private object is not readable.
    assert requests.get(urls["main.py"].split("?")[0], timeout=10).status_code == 403


def test_retention_deletes_finished_submissions_and_their_files(xqueue_factory: Any, fake_lms: FakeLMS) -> None:
    server = xqueue_factory(retention_days=1e-6, housekeeping_interval_seconds=0.2)
    key, _ = LMSClient(server).submit("test-pull", fake_lms.callback_url("ret"), files={"x.txt": b"x"})
    LMSClient(server).submit("test-pull", fake_lms.callback_url("keep"), "unfinished")
    grader = GraderClient(server)
    item = grader.pull("test-pull")
    assert item is not None
    url = json.loads(item["xqueue_files"])["x.txt"]
    grader.put_result(item["xqueue_header"], GRADE)
    fake_lms.wait_for(lambda cbs: any(c.xqueue_header["lms_key"] == key for c in cbs))
    storage_dir = server.settings.resolved_storage_dir

    async def count_rows() -> int:
        import asyncpg

        conn = await asyncpg.connect(server.settings.database_url)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM submissions"))
        finally:
            await conn.close()

    wait_until_blocking(lambda: server.run(count_rows()) == 1, 10, "one submission row left", interval=0.1)
    assert server.run(count_rows()) == 1  # the unfinished one stays
    assert requests.get(url, timeout=10).status_code == 404
    assert not any(p.is_file() for p in storage_dir.rglob("*"))


def test_health_readiness_and_metrics(xqueue: ServerThread, queue_name: str, fake_lms: FakeLMS) -> None:
    assert requests.get(f"{xqueue.url}/healthz", timeout=10).json() == {"status": "ok"}
    assert requests.get(f"{xqueue.url}/readyz", timeout=10).json() == {"status": "ok"}
    LMSClient(xqueue).submit(queue_name, fake_lms.callback_url("m"))

    def depth_shown() -> str:
        text = requests.get(f"{xqueue.url}/metrics", timeout=10).text
        return text if f'xqueue_queue_depth{{queue="{queue_name}"}} 1.0' in text else ""

    text = wait_until_blocking(depth_shown, 10, "the queue depth in /metrics", interval=0.2)
    assert f'xqueue_queue_depth{{queue="{queue_name}"}} 1.0' in text
    assert f'xqueue_queue_oldest_age_seconds{{queue="{queue_name}"}}' in text
    assert f'xqueue_submissions_total{{queue="{queue_name}"}} 1.0' in text
    for name in ("xqueue_http_request_duration_seconds_bucket", "xqueue_callbacks_pending",
                 "xqueue_callbacks_dead", "xqueue_callback_oldest_pending_age_seconds"):
        assert name in text


def test_readiness_fails_when_the_database_is_gone(xqueue_factory: Any, postgres: Any) -> None:
    import asyncio

    import asyncpg

    server = xqueue_factory()
    database = (server.settings.database_url or "").rsplit("/", 1)[1]

    async def cut_connections() -> None:
        conn = await asyncpg.connect(postgres.url)
        try:
            # Refuse new connections to this database and drop the existing ones.
            await conn.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
            await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database)
        finally:
            await conn.close()

    asyncio.run(cut_connections())
    response = requests.get(f"{server.url}/readyz", timeout=15)
    assert response.status_code == 503
    assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200


def self_signed_context(directory: Path) -> ssl.SSLContext:
    cert, key = directory / "lms.crt", directory / "lms.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def test_callbacks_verify_the_lms_tls_certificate_by_default(xqueue_factory: Any, tmp_path: Path) -> None:
    lms = FakeLMS(ssl_context=self_signed_context(tmp_path))
    try:
        verifying = xqueue_factory(callback_backoff_base_seconds=0.05, callback_backoff_max_seconds=0.2)
        key, _ = LMSClient(verifying).submit("test-pull", lms.callback_url("tls"))
        grader = GraderClient(verifying)
        item = grader.pull("test-pull")
        assert item is not None
        grader.put_result(item["xqueue_header"], GRADE)

        def three_failures() -> float:
            text = requests.get(f"{verifying.url}/metrics", timeout=10).text
            found = re.search(r'xqueue_callback_failures_total\{kind="grade"\} ([0-9.]+)', text)
            counted = float(found.group(1)) if found else 0.0
            return counted if counted >= 3 else 0.0

        failures = wait_until_blocking(three_failures, 10, "three failed callback attempts", interval=0.1)
        assert failures >= 3  # the certificate was refused, and the outbox keeps retrying
        assert lms.callbacks == []
        # An operator who knowingly runs the LMS with a private certificate can turn verification off.
        trusting = xqueue_factory(callback_verify_tls=False)
        key2, _ = LMSClient(trusting).submit("test-pull", lms.callback_url("tls2"))
        grader2 = GraderClient(trusting)
        item2 = grader2.pull("test-pull")
        assert item2 is not None
        grader2.put_result(item2["xqueue_header"], GRADE)
        lms.wait_for(lambda cbs: any(c.xqueue_header["lms_key"] == key2 for c in cbs))
        assert key not in {c.xqueue_header["lms_key"] for c in lms.callbacks}
    finally:
        lms.stop()
