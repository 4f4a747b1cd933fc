"""``?pool_mode=transaction`` marks a URL that goes through a transaction pooler (no database)."""

from __future__ import annotations

import pytest
from alembic.config import Config
from click.testing import CliRunner

from alembic_pgflow import configure_database_url
from alembic_pgflow.errors import DatabaseURLError
from pgflow import _db
from pgflow.cli import main
from pgflow.errors import InvalidDatabaseURLError
from pgflow.worker import WorkerOptions

POOLED = "postgresql://app@pgbouncer.internal:6432/app?pool_mode=transaction"


def test_pool_mode_marks_a_pooled_url_and_never_reaches_libpq() -> None:
    assert _db.pooled_url(POOLED)
    assert _db.pooled_url(POOLED.replace("transaction", "statement"))
    assert not _db.pooled_url(POOLED.replace("transaction", "session"))
    assert not _db.pooled_url("postgresql://app@db.internal/app")
    assert "pool_mode" not in _db.conninfo(POOLED)
    assert _db.conninfo(POOLED) == "postgresql://app@pgbouncer.internal:6432/app"
    engine = _db.create_engine(POOLED)
    assert "pool_mode" not in engine.url.render_as_string()
    engine.dispose()


def test_an_unknown_pool_mode_is_a_clear_error() -> None:
    with pytest.raises(InvalidDatabaseURLError, match="pool_mode=transaction"):
        _db.normalize_url(POOLED.replace("transaction", "transactions"))


def test_driver_connections_that_never_prepare_count_as_pooled() -> None:
    class Driver:
        prepare_threshold: int | None = 5

    driver = Driver()
    assert not _db.through_pooler(driver)
    driver.prepare_threshold = None
    assert _db.through_pooler(driver)


def test_a_listen_url_through_a_transaction_pooler_is_refused() -> None:
    with pytest.raises(ValueError, match="receives nothing"):
        WorkerOptions(listen_url=POOLED)
    result = CliRunner().invoke(
        main, ["run-worker", "tests.helpers.process_flows", "--listen-url", POOLED]
    )
    assert result.exit_code == 2, result.output
    assert "--listen-url must reach the server directly" in result.output


def test_alembic_refuses_a_pooled_url_and_asks_for_a_direct_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", POOLED)
    with pytest.raises(DatabaseURLError, match="run migrations with a direct URL"):
        configure_database_url(Config())
