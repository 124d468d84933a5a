"""A throwaway PostgreSQL cluster (initdb + pg_ctl) for the local run and the test fixtures.

Listens on a Unix socket in its own folder and on 127.0.0.1 at a free port; trust authentication
because nothing but this machine's loopback can reach it.

Durable by default: PostgreSQL's own settings (fsync, synchronous_commit, full_page_writes on), so a
grade the server acknowledged survives a power cut. ``durable=False`` (XQUEUE_LOCAL_DURABILITY=fast)
turns all three off for tests and demos: faster, but a crash of the machine can lose acknowledged
submissions and grades, and can corrupt the cluster.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path


class LocalPostgresError(RuntimeError):
    pass


def find_pg_bin() -> Path:
    """Directory holding initdb and pg_ctl: Debian's versioned folder first, then PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        if os.access(os.path.join(candidate, "initdb"), os.X_OK):
            return Path(candidate)
    initdb = shutil.which("initdb")
    if initdb:
        return Path(os.path.realpath(initdb)).parent
    raise LocalPostgresError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found; run `make system-deps` "
        "(installs Debian's postgresql package) or set XQUEUE_DATABASE_URL"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


FAST_OPTIONS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def server_options(port: int, socket_dir: Path, *, durable: bool, extra: Sequence[str] = ()) -> list[str]:
    """The ``-c`` settings of the cluster. Durable mode keeps PostgreSQL's defaults for everything
    that decides what survives a crash; fast mode trades that for fewer disk flushes."""
    options = ["listen_addresses=127.0.0.1", f"port={port}", f"unix_socket_directories={socket_dir}",
               "max_connections=200", "shared_buffers=128MB"]
    if not durable:
        options += FAST_OPTIONS
    return [*options, *extra]


class LocalPostgres:
    """One PostgreSQL cluster in ``data_dir``; reused when it already exists there."""

    def __init__(self, data_dir: str | Path, port: int | None = None, *, durable: bool = True,
                 options: Sequence[str] = ()) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port or free_port()
        self.durable = durable
        self.options = tuple(options)  # extra "name=value" server settings (the benchmark loads pg_stat_statements)
        self.bin = find_pg_bin()
        self._started_here = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        run_as_root = os.geteuid() == 0
        cmd = [str(self.bin / args[0]), *args[1:]]
        if run_as_root:
            # PostgreSQL refuses to run as root; use the unprivileged 'postgres' or 'nobody' account.
            user = _unprivileged_user()
            cmd = ["runuser", "-u", user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)

    def start(self) -> LocalPostgres:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        pgdata = self.data_dir / "pgdata"
        if os.geteuid() == 0:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            shutil.chown(self.data_dir, _unprivileged_user())
        if not (pgdata / "PG_VERSION").exists():
            result = self._run("initdb", "-D", str(pgdata), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                               "--no-sync")
            if result.returncode != 0:
                raise LocalPostgresError(f"initdb failed: {result.stderr.strip()}")
        # A stale postmaster.pid from a killed run would block the start.
        if (pgdata / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(pgdata), "stop", "-m", "immediate", "-w", "-t", "10")
            (pgdata / "postmaster.pid").unlink(missing_ok=True)
        options = " ".join(f"-c {option}" for option in server_options(
            self.port, self.data_dir, durable=self.durable, extra=self.options))
        result = self._run("pg_ctl", "-D", str(pgdata), "-o", options, "-l", str(self.data_dir / "postgres.log"),
                           "-w", "-t", "60", "start")
        if result.returncode != 0:
            log_tail = ""
            log_file = self.data_dir / "postgres.log"
            if log_file.exists():
                log_tail = log_file.read_text()[-2000:]
            raise LocalPostgresError(f"pg_ctl start failed: {result.stderr.strip()}\n{log_tail}")
        self._started_here = True
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise LocalPostgresError(f"PostgreSQL did not accept connections on port {self.port}")

    def stop(self) -> None:
        if not self._started_here:
            return
        self._run("pg_ctl", "-D", str(self.data_dir / "pgdata"), "stop", "-m", "fast", "-w", "-t", "30")
        self._started_here = False

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _unprivileged_user() -> str:
    import pwd

    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise LocalPostgresError("running as root and no 'postgres' or 'nobody' account to run PostgreSQL")
