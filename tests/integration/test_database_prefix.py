"""The names of throwaway test databases: ``pgflow_test_`` unless ``PGFLOW_TEST_DATABASE_PREFIX``
or the pytest option ``--pgflow-db-prefix`` says otherwise (docs/testing.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from pgflow._devserver import DevServer
from pgflow.errors import InvalidDatabasePrefixError
from pgflow.testing import temporary_database


def database_exists(server: DevServer, name: str) -> bool:
    conninfo = server.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        found = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        return found.fetchone() is not None


def test_the_prefix_comes_from_the_argument_then_the_environment(
    pgflow_server: DevServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGFLOW_TEST_DATABASE_PREFIX", raising=False)
    with temporary_database(pgflow_server.url) as url:
        assert str(url.database).startswith("pgflow_test_")
    monkeypatch.setenv("PGFLOW_TEST_DATABASE_PREFIX", "shopapp_ci_")
    with temporary_database(pgflow_server.url) as url:
        name = str(url.database)
        assert name.startswith("shopapp_ci_")
        assert len(name) == len("shopapp_ci_") + 12
        assert database_exists(pgflow_server, name)
    assert not database_exists(pgflow_server, name)
    with temporary_database(pgflow_server.url, prefix="other_") as url:
        assert str(url.database).startswith("other_")


@pytest.mark.parametrize("prefix", ["Shop", "1shop_", "shop-ci_", "a" * 52, "shop ci"])
def test_a_prefix_that_is_no_plain_database_name_is_refused(
    pgflow_server: DevServer, monkeypatch: pytest.MonkeyPatch, prefix: str
) -> None:
    with (
        pytest.raises(InvalidDatabasePrefixError, match="lower-case letters"),
        temporary_database(pgflow_server.url, prefix=prefix),
    ):
        pass
    monkeypatch.setenv("PGFLOW_TEST_DATABASE_PREFIX", prefix)
    with (
        pytest.raises(InvalidDatabasePrefixError, match="PGFLOW_TEST_DATABASE_PREFIX"),
        temporary_database(pgflow_server.url),
    ):
        pass


PLUGIN_TEST = """
def test_names(pgflow_database, pgflow_empty_database, pgflow_template_database):
    names = [pgflow_database.database, pgflow_empty_database.database, pgflow_template_database]
    assert all(name.startswith("shopapp_ci_") for name in names), names
"""


def run_pytest(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PGFLOW_TEST_DATABASE_PREFIX"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, str(directory)],
        capture_output=True,
        text=True,
        cwd=directory,
        env=env,
        timeout=300,
        check=False,
    )


def test_the_plugins_fixtures_take_the_prefix_from_a_pytest_option(tmp_path: Path) -> None:
    (tmp_path / "test_names.py").write_text(PLUGIN_TEST)
    passed = run_pytest(tmp_path, "--pgflow-db-prefix", "shopapp_ci_")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    default = run_pytest(tmp_path)  # pgflow_test_ databases: the test's assertion fails
    assert default.returncode == 1, default.stdout + default.stderr
    assert "pgflow_test_" in default.stdout
    refused = run_pytest(tmp_path, "--pgflow-db-prefix", "Shop-CI")
    assert refused.returncode == pytest.ExitCode.USAGE_ERROR, refused.stdout + refused.stderr
    assert "--pgflow-db-prefix: the prefix 'Shop-CI' is not a test database prefix" in (
        refused.stderr
    )
