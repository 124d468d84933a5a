"""scripts/build-images.sh --manifest: the six images without Docker (buildah), their archives and cache,
and what runs in them under runc with a pod's restrictions (read-only root, no capabilities, their uid).

Needs root, buildah and runc (``make system-deps`` installs them as root). The first run on a machine
builds everything (minutes: a Debian base, pip installs); later runs reuse the cache outside the repo.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.images.oci import Mount, container

ROOT = Path(__file__).resolve().parents[2]
NAMES = {"xqueue-server", "xqueue-operator", "xqueue-grader", "xqueue-grader-demo", "postgresql", "pause"}
COLD_BUILD_TIMEOUT = 3600

if os.geteuid() != 0:
    pytest.skip("building images without Docker needs root (buildah chroot isolation, mmdebstrap)",
                allow_module_level=True)
for _tool in ("buildah", "runc"):
    if shutil.which(_tool) is None:
        pytest.skip(f"{_tool} is not installed (make system-deps installs it as root)", allow_module_level=True)


# What the images are built from. The tests build a snapshot of these: keys depend on content only, so
# the snapshot shares the cache with the working tree, and edits made meanwhile cannot change it.
BUILD_INPUTS = ("scripts", "images", "grader_image", "xqueue_common", "xqueue_server", "operator", "examples",
                "tools/pause", ".dockerignore")


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("build-inputs")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in BUILD_INPUTS:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, root / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(source, root / name)
    return root


def run_script(root: Path, timeout: float) -> tuple[dict[str, dict[str, str]], str, float]:
    """The manifest, the progress output and the wall time of one --manifest run."""
    start = time.monotonic()
    proc = subprocess.run(["bash", str(root / "scripts" / "build-images.sh"), "--manifest"], capture_output=True,
                          text=True, timeout=timeout, cwd=root)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, f"build-images.sh failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout), proc.stderr, elapsed


@pytest.fixture(scope="module")
def manifest(snapshot: Path) -> dict[str, dict[str, str]]:
    result, _, _ = run_script(snapshot, COLD_BUILD_TIMEOUT)
    return result


def test_manifest_names_every_image_by_its_input_key(manifest: dict[str, dict[str, str]]) -> None:
    assert set(manifest) == NAMES
    for name, entry in manifest.items():
        assert set(entry) == {"ref", "archive"}
        assert re.fullmatch(rf"localhost/xqueue-k8s/{re.escape(name)}:[0-9a-f]{{12}}", entry["ref"]), entry
        archive = Path(entry["archive"])
        assert archive.is_absolute() and archive.is_file(), entry
        assert not archive.is_relative_to(ROOT), "the cache must live outside the repository"


def docker_archive_manifest(path: Path) -> list[dict[str, Any]]:
    with tarfile.open(path) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        entries: list[dict[str, Any]] = json.load(member)
        names = set(tar.getnames())
    for entry in entries:
        assert entry["Config"] in names
        assert all(layer in names for layer in entry["Layers"]), "a layer the manifest names is missing"
    return entries


def test_archives_are_docker_archives_of_their_refs(manifest: dict[str, dict[str, str]]) -> None:
    for name, entry in manifest.items():
        entries = docker_archive_manifest(Path(entry["archive"]))
        assert len(entries) == 1, name
        assert entries[0]["RepoTags"] == [entry["ref"]], name


def test_second_run_is_a_cache_hit(manifest: dict[str, dict[str, str]], snapshot: Path) -> None:
    again, progress, elapsed = run_script(snapshot, timeout=300)
    assert again == manifest
    assert "building" not in progress, progress
    assert elapsed < 30, f"a warm run took {elapsed:.1f} s"


def test_python_images_run_their_commands_as_10001_on_a_read_only_root(
        manifest: dict[str, dict[str, str]]) -> None:
    checks = {
        "xqueue-server": [["xqueue-server", "--help"], ["xqueue-admin", "--help"]],
        "xqueue-operator": [["coursegrader-operator", "--help"]],
        "xqueue-grader": [["python", "-m", "xqueue_grader", "--help"], ["tini", "--version"], ["git", "--version"]],
    }
    for name, commands in checks.items():
        with container(manifest[name]["ref"]) as box:
            for command in commands:
                result = box.run(command)
                assert result.returncode == 0, f"{name}: {command}: {result.stdout}{result.stderr}"
                assert "usage" in result.stdout.lower() or "version" in result.stdout.lower(), result.stdout
            # /tmp is world-writable in the image: only the read-only root keeps the process out.
            ident = box.run(["sh", "-c", "id -u; id -g; touch /tmp/probe 2>&1"])
            assert ident.stdout.split("\n")[:2] == ["10001", "10001"], ident
            assert "Read-only file system" in ident.stdout, ident


def test_grader_demo_image_holds_the_course_repository(manifest: dict[str, dict[str, str]]) -> None:
    with container(manifest["xqueue-grader-demo"]["ref"]) as box:
        result = box.run(["git", "-C", "/opt/xqueue/demo-course", "log", "--oneline"], mounts=[Mount("/tmp")])
        assert result.returncode == 0, result.stderr
        assert "demo course" in result.stdout


def test_pause_exits_zero_on_sigterm(manifest: dict[str, dict[str, str]], tmp_path: Path) -> None:
    with container(manifest["pause"]["ref"]) as box:
        assert box.config.entrypoint == ("/pause",)
        cid, proc = box.start(["/pause"], log=tmp_path / "pause.log")
        time.sleep(1)
        assert proc.poll() is None, (tmp_path / "pause.log").read_text()
        box.signal(cid, "TERM")
        assert proc.wait(timeout=30) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def pg_volume(tmp_path: Path) -> Iterator[Path]:
    """The data volume as the chart's StatefulSet gets it: owned by fsGroup 999, PGDATA a subdirectory."""
    volume = tmp_path / "pgvolume"
    volume.mkdir()
    os.chown(volume, 0, 999)
    volume.chmod(0o2775)
    yield volume


def test_postgresql_image_initialises_like_the_official_one_and_serves_the_server(
        manifest: dict[str, dict[str, str]], pg_volume: Path, tmp_path: Path) -> None:
    password = secrets.token_hex(16)
    port = free_port()
    env = {"POSTGRES_USER": "xqueue", "POSTGRES_DB": "xqueue", "POSTGRES_PASSWORD": password,
           "PGDATA": "/var/lib/postgresql/data/pgdata"}
    mounts = [Mount("/var/lib/postgresql/data", str(pg_volume)), Mount("/var/run/postgresql"), Mount("/tmp")]
    log = tmp_path / "postgres.log"
    with container(manifest["postgresql"]["ref"]) as pg:
        # The chart's pod: uid 999, read-only root, the image's entrypoint and command.
        args = [*pg.config.entrypoint, *pg.config.cmd, "-p", str(port), "-c", "listen_addresses=127.0.0.1"]
        cid, proc = pg.start(args, user="999:999", env=env, mounts=mounts, log=log)
        try:
            deadline = time.monotonic() + 120
            ready = None
            while time.monotonic() < deadline and proc.poll() is None:
                # The chart's readiness probe, on our port.
                ready = pg.exec(cid, ["pg_isready", "-h", "127.0.0.1", "-p", str(port), "-U", "xqueue",
                                      "-d", "xqueue"])
                if ready.returncode == 0:
                    break
                time.sleep(0.5)
            assert ready is not None and ready.returncode == 0, log.read_text()
            assert password not in log.read_text()

            # The server image migrates the database over TCP with the password.
            url = f"postgresql://xqueue:{password}@127.0.0.1:{port}/xqueue"
            with container(manifest["xqueue-server"]["ref"]) as server:
                migrated = server.run(["xqueue-admin", "migrate"], env={"XQUEUE_DATABASE_URL": url})
            assert migrated.returncode == 0, migrated.stdout + migrated.stderr

            def sql(query: str) -> str:
                result = pg.exec(cid, ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "xqueue", "-d", "xqueue",
                                       "-AtXc", query])
                assert result.returncode == 0, result.stderr
                return result.stdout.strip()

            assert int(sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")) > 0
            assert sql("SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'xqueue'") == "t"
            # Clients other than the pod itself must authenticate.
            assert sql("SELECT auth_method FROM pg_hba_file_rules WHERE address = 'all'") == "scram-sha-256"
            assert (pg_volume / "pgdata" / "PG_VERSION").is_file()
            assert (pg_volume / "pgdata").stat().st_uid == 999
        finally:
            pg.signal(cid, "TERM")
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pg.signal(cid, "KILL")
                proc.wait(timeout=30)
        assert proc.returncode == 0, log.read_text()
