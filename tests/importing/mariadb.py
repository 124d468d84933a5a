"""A throwaway MariaDB server (Debian's ``mariadb-server`` package) in a temp dir, on 127.0.0.1,
for the upstream-import tests: upstream XQueue runs on MySQL/MariaDB.

Root logs in with a password over TCP; nothing of the machine's own MariaDB (if any) is touched.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pymysql

REPO = Path(__file__).resolve().parents[2]
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin"])
START_TIMEOUT_SECONDS = 60


def find_binaries() -> tuple[str, str] | None:
    server = shutil.which("mariadbd", path=SEARCH_PATH) or shutil.which("mysqld", path=SEARCH_PATH)
    install = shutil.which("mariadb-install-db", path=SEARCH_PATH) or shutil.which("mysql_install_db",
                                                                                    path=SEARCH_PATH)
    return (server, install) if server and install else None


def ensure_installed() -> tuple[str, str]:
    """The server binaries, installing Debian's package through the project's script when missing."""
    found = find_binaries()
    if found is None:
        subprocess.run(["bash", str(REPO / "scripts" / "ensure-system-deps.sh")], check=True, timeout=900)
        found = find_binaries()
    if found is None:
        raise RuntimeError("mariadb-server is not installed and scripts/ensure-system-deps.sh could not install it")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalMariaDB:
    def __init__(self) -> None:
        self.server_bin, self.install_bin = ensure_installed()
        self.dir = Path(tempfile.mkdtemp(prefix="xqueue-test-mariadb-"))
        self.port = _free_port()
        self.password = secrets.token_hex(12)
        self.process: subprocess.Popen[bytes] | None = None

    def _user_args(self) -> list[str]:
        # mariadbd refuses to run as root unless told to; the data dir belongs to whoever we are.
        return ["--user=root"] if os.geteuid() == 0 else []

    def start(self) -> None:
        data = self.dir / "data"
        subprocess.run([self.install_bin, "--no-defaults", f"--datadir={data}",
                        "--auth-root-authentication-method=normal", "--skip-test-db", *self._user_args()],
                       check=True, capture_output=True, timeout=120)
        self.process = subprocess.Popen(
            [self.server_bin, "--no-defaults", f"--datadir={data}", f"--socket={self.dir / 'sock'}",
             f"--port={self.port}", "--bind-address=127.0.0.1", f"--pid-file={self.dir / 'pid'}",
             f"--log-error={self.dir / 'error.log'}", "--skip-log-bin", "--innodb-buffer-pool-size=32M",
             "--skip-name-resolve", *self._user_args()],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            try:
                conn = pymysql.connect(unix_socket=str(self.dir / "sock"), user="root", password="",
                                       connect_timeout=2)
                break
            except pymysql.MySQLError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.dir / "error.log").read_text(errors="replace")[-2000:]
                    self.stop()
                    raise RuntimeError(f"MariaDB did not start:\n{log}") from None
                time.sleep(0.2)
        try:
            with conn.cursor() as cur:
                # Tests connect over TCP with a password, like an importer pointed at upstream's server.
                cur.execute("CREATE USER 'xqueue'@'127.0.0.1' IDENTIFIED BY %s", (self.password,))
                cur.execute("GRANT ALL ON *.* TO 'xqueue'@'127.0.0.1'")
        finally:
            conn.close()

    def connect(self, database: str | None = None) -> pymysql.connections.Connection:
        return pymysql.connect(host="127.0.0.1", port=self.port, user="xqueue", password=self.password,
                               database=database, charset="utf8mb4", autocommit=True, connect_timeout=10)

    def create_database(self, name: str) -> str:
        """An empty database; returns its URL."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        finally:
            conn.close()
        return f"mysql://xqueue:{self.password}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)
