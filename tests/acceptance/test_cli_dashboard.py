"""``pgflow dashboard`` as a user runs it: a separate process, a real port, real exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
from sqlalchemy.engine import URL

from pgflow.dashboard import auth_from_environment, is_loopback
from tests.helpers import database
from tests.helpers.dashboard import free_port

PGFLOW = [sys.executable, "-m", "pgflow"]


def _environment(url: URL | None, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k != "DATABASE_URL" and "PGFLOW_DASHBOARD" not in k
    }
    if url is not None:
        env["DATABASE_URL"] = database.libpq_url(url)
    return {**env, **extra}


def test_refuses_a_public_address_without_authentication(pgflow_database: URL) -> None:
    refused = subprocess.run(
        [*PGFLOW, "dashboard", "--host", "0.0.0.0", "--port", str(free_port())],  # noqa: S104
        capture_output=True,
        text=True,
        env=_environment(pgflow_database),
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1
    assert "PGFLOW_DASHBOARD_TOKEN" in refused.stderr
    assert "--insecure" in refused.stderr


def test_half_configured_basic_auth_is_refused(pgflow_database: URL) -> None:
    refused = subprocess.run(
        [*PGFLOW, "dashboard", "--port", str(free_port())],
        capture_output=True,
        text=True,
        env=_environment(pgflow_database, PGFLOW_DASHBOARD_USERNAME="ada"),
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1
    assert "PGFLOW_DASHBOARD_PASSWORD" in refused.stderr


def test_refuses_to_start_without_a_database() -> None:
    refused = subprocess.run(
        [*PGFLOW, "dashboard", "--port", str(free_port())],
        capture_output=True,
        text=True,
        env=_environment(None, DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere"),
        timeout=60,
        check=False,
    )
    assert refused.returncode == 3, refused.stderr
    assert refused.stdout == ""
    [line] = refused.stderr.splitlines()
    assert line.startswith("error: cannot connect to postgresql://postgres@127.0.0.1:1/nowhere")


def test_serves_on_loopback_and_stops_on_sigterm(pgflow_database: URL) -> None:
    port = free_port()
    token = "a-long-enough-token-for-tests"  # noqa: S105
    with subprocess.Popen(
        [*PGFLOW, "dashboard", "--port", str(port), "--read-only"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(pgflow_database, PGFLOW_DASHBOARD_TOKEN=token),
    ) as process:
        try:
            _check_serving(process, port, token)
        finally:
            process.terminate()
            _, errors = process.communicate(timeout=20)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert process.returncode in (0, -15), errors
        assert "Finished server process" in errors


def _check_serving(process: subprocess.Popen[str], port: int, token: str) -> None:
    assert process.stdout is not None
    announced = process.stdout.readline()
    assert f"http://127.0.0.1:{port}/" in announced
    deadline = time.monotonic() + 20
    while True:
        try:
            response = httpx.get(
                f"http://127.0.0.1:{port}/flows",
                headers={"authorization": f"Bearer {token}"},
                timeout=5,
            )
            break
        except httpx.ConnectError:
            assert time.monotonic() < deadline, "the dashboard did not start listening"
            time.sleep(0.1)
    assert response.status_code == 200
    assert "read-only" in response.text
    assert httpx.get(f"http://127.0.0.1:{port}/flows", timeout=5).status_code == 401


def test_loopback_and_environment_settings() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")  # noqa: S104
    assert not is_loopback("192.0.2.10")
    assert auth_from_environment({}) is None
    token = auth_from_environment({"PGFLOW_DASHBOARD_TOKEN": "x" * 16})
    assert token is not None
    assert "x" * 16 not in repr(token)  # secrets stay out of logs and tracebacks
    basic = auth_from_environment(
        {"PGFLOW_DASHBOARD_USERNAME": "ada", "PGFLOW_DASHBOARD_PASSWORD": "pw"}
    )
    assert basic is not None
    assert "pw" not in repr(basic)
