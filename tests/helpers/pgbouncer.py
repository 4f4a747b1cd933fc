"""A PgBouncer a test owns, in transaction mode, in front of a PostgreSQL server.

Debian's ``pgbouncer`` (``make setup`` installs it as root, else prints the apt command); without
it the tests fail with that same message, never skip. PgBouncer refuses to run as root, so as root
it runs as the ``postgres`` system user, like the tests' own clusters.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import URL

from tests.helpers.own_cluster import SYSTEM_USER_AS_ROOT, free_port

BINARY = os.environ.get("PGFLOW_PGBOUNCER", "/usr/sbin/pgbouncer")
MISSING = f"The pooler tests need Debian's pgbouncer at {BINARY}: sudo apt-get install -y pgbouncer"
START_TIMEOUT = 20.0


class PgBouncer:
    """``url(database)`` reaches ``database`` on the server through the pooler; the URL carries
    ``pool_mode=transaction``, as a user's would."""

    def __init__(self, root: Path, server: URL, *, pool_size: int) -> None:
        if not (Path(BINARY).is_file() and os.access(BINARY, os.X_OK)):
            raise RuntimeError(MISSING)
        self.root = root
        self.port = free_port()
        self.log = root / "pgbouncer.log"
        (root / "userlist.txt").write_text(f'"{server.username or "postgres"}" ""\n')
        (root / "pgbouncer.ini").write_text(
            f"""[databases]
* = host={server.host or "127.0.0.1"} port={server.port or 5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {root / "userlist.txt"}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 1000
max_db_connections = {pool_size}
ignore_startup_parameters = extra_float_digits
logfile = {self.log}
pidfile = {root / "pgbouncer.pid"}
server_check_delay = 0
"""
        )
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam(SYSTEM_USER_AS_ROOT)
            for path in (root, *root.iterdir()):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            self._as_user = ["runuser", "-u", SYSTEM_USER_AS_ROOT, "--"]
        self._process: subprocess.Popen[bytes] | None = None
        self._server = server

    def url(self, database: str) -> URL:
        return URL.create(
            "postgresql+psycopg",
            username=self._server.username or "postgres",
            host="127.0.0.1",
            port=self.port,
            database=database,
            query={"pool_mode": "transaction"},
        )

    def libpq_url(self, database: str) -> str:
        return self.url(database).set(drivername="postgresql").render_as_string(False)

    def start(self) -> None:
        self._process = subprocess.Popen(
            [*self._as_user, BINARY, str(self.root / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited at start:\n{self.log_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                time.sleep(0.05)
            else:
                return
        raise RuntimeError(f"pgbouncer did not listen within {START_TIMEOUT}s:\n{self.log_text()}")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else "(no log)"


@contextmanager
def pgbouncer(server: URL, *, pool_size: int = 10) -> Iterator[PgBouncer]:
    """A started PgBouncer in transaction mode in front of ``server``, stopped afterwards.

    ``pool_size`` server connections at most serve all of its clients (far fewer than they
    open), which is what makes a transaction pooler worth having."""
    root = Path(tempfile.mkdtemp(prefix="pgflow-pgbouncer-"))
    try:
        bouncer = PgBouncer(root, server, pool_size=pool_size)
        bouncer.start()
        try:
            yield bouncer
        finally:
            bouncer.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
