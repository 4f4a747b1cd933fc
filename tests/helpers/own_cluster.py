"""A PostgreSQL cluster a test owns: initdb in a temporary directory, its own port, stopped and
restarted at will (the shared server must never be stopped).

The binaries are the local server's (``pg_config --bindir``, else ``pg_ctl`` on PATH, else
``PGFLOW_TEST_PG_BINDIR``). initdb refuses to run as root, so as root the cluster belongs to the
``postgres`` system user that a PostgreSQL installation creates. Nothing is skipped: without
binaries the test fails and says what to set.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import URL

SYSTEM_USER_AS_ROOT = "postgres"


def server_bindir() -> Path:
    explicit = os.environ.get("PGFLOW_TEST_PG_BINDIR")
    if explicit:
        return Path(explicit)
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if found and (Path(found) / "pg_ctl").exists():
            return Path(found)
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        return Path(pg_ctl).resolve().parent
    raise RuntimeError(
        "these tests start a PostgreSQL cluster of their own and found no initdb/pg_ctl: "
        "install the PostgreSQL server binaries or set PGFLOW_TEST_PG_BINDIR"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class OwnCluster:
    """A new cluster in ``root`` (initdb), or with ``replica_of``, a streaming replica of that
    cluster (``pg_basebackup -R``: it follows the primary until stopped)."""

    def __init__(self, root: Path, *, replica_of: OwnCluster | None = None) -> None:
        self.bindir = server_bindir()
        self.data = root / "data"
        self.port = free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam(SYSTEM_USER_AS_ROOT)
            os.chown(root, owner.pw_uid, owner.pw_gid)
            self._as_user = ["runuser", "-u", SYSTEM_USER_AS_ROOT, "--"]
        if replica_of is None:
            self._run(
                "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
            )
        else:
            self._run(
                "pg_basebackup",
                *("-D", str(self.data), "-R", "-X", "stream", "-c", "fast"),
                *("-h", "127.0.0.1", "-p", str(replica_of.port), "-U", "postgres"),
            )
        # Appended settings win over the copied primary's (the last one in the file counts).
        settings = f"""
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.data}'
max_connections = 50
shared_buffers = 16MB
fsync = off
"""
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(settings)

    @property
    def url(self) -> URL:
        return URL.create(
            "postgresql+psycopg",
            username="postgres",
            host="127.0.0.1",
            port=self.port,
            database="postgres",
        )

    def _run(self, program: str, *args: str) -> None:
        command = [*self._as_user, str(self.bindir / program), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")

    def start(self) -> None:
        log = str(self.data / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast`` disconnects every client and shuts down cleanly; ``immediate`` is a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")


@contextmanager
def own_cluster() -> Iterator[OwnCluster]:
    """A started cluster, stopped and deleted afterwards (even if the test stopped it)."""
    root = Path(tempfile.mkdtemp(prefix="pgflow-own-cluster-"))
    try:
        cluster = OwnCluster(root)
        cluster.start()
        try:
            yield cluster
        finally:
            if (cluster.data / "postmaster.pid").exists():
                cluster.stop("immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def streaming_replica(primary: OwnCluster) -> Iterator[OwnCluster]:
    """A started hot standby of ``primary`` on a port of its own, stopped and deleted after."""
    root = Path(tempfile.mkdtemp(prefix="pgflow-own-replica-"))
    try:
        replica = OwnCluster(root, replica_of=primary)
        replica.start()
        try:
            yield replica
        finally:
            if (replica.data / "postmaster.pid").exists():
                replica.stop("immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)
