"""The benchmark report: medians, ratios against each system, goal verdicts, JSON round trip."""

from __future__ import annotations

import json

from bench._machine import Conditions, Probe
from bench._report import Results, render


def recorded() -> Results:
    results = Results(sizes={"jobs": 10}, repetitions=2)
    for system, p1, p5 in (
        ("pgflow-python", 400, 0.3),
        ("sql-floor", 500, None),
        ("sql-floor-set", 125, None),
    ):
        for value in (p1, p1 * 0.9):
            results.add(system, "P1", value)
        if p5 is not None:
            results.add(system, "P5", p5)
    results.add("pgqueuer", "P1", 4000)
    results.add("pgflow-python", "P6_rate", 380)
    results.add("pgflow-python", "P4_p99", 45.0)
    results.add("pgflow-python", "P4_p50", 9.0)
    results.add("sql-floor-set", "P4_p50", 6.5)
    results.settings["pgqueuer"] = "batch 100"
    results.notes["dbos"] = "not installed (dbos): pip install -e '.[bench]'"
    return results


def test_the_table_shows_median_and_min_and_na_where_a_system_has_no_figure() -> None:
    table = render(recorded())
    assert (
        "| P1 drain, 1 worker process | jobs/s | 380.00 (min 360.00) | 475.00 (min 450.00)" in table
    )
    assert "| P5 worker CPU per job | ms | 0.30 | n/a | n/a |" in table


def test_ratios_and_goal_verdicts_come_from_the_medians() -> None:
    table = render(recorded())
    assert "sql-floor 0.80x, sql-floor-set 3.20x, pgqueuer 0.10x" in table
    assert "- P1 ≥ 1.0x PgQueuer (long-term): NOT met (0.10)" in table
    assert "- P1 ≥ 3x upstream per-task SQL floor: NOT met (0.80)" in table
    assert "- P1 ≥ 0.8x set-based SQL floor: met (3.20)" in table
    assert "- P4 p50 ≤ set-based floor + 2 ms: NOT met (2.50)" in table
    assert "- P5 ≤ 0.35 ms CPU per job: met (0.30)" in table
    assert "- P6 ≥ 0.9: met (1.00)" in table  # 380 with backlog / 380 without
    assert "- P4 p99 ≤ 12 ms: NOT met (45.00)" in table
    assert "- P2 ≥ 4x DBOS: not measured" in table
    assert "- dbos: not installed (dbos)" in table


def test_a_saved_run_renders_the_same_table_again() -> None:
    results = recorded()
    saved = json.loads(json.dumps(results.to_json()))
    assert render(Results.from_json(saved)) == render(results)


def test_the_report_says_when_the_machine_was_busy() -> None:
    results = recorded()
    results.record_conditions("pgflow-python", "P1", Conditions(0.4, 0.05, 0.0))
    results.record_conditions("pgqueuer", "P1", Conditions(3.1, 0.9, 0.0))
    results.record_conditions("sql-floor", "P1", Conditions(0.5, 0.1, 6.0))
    table = render(Results.from_json(json.loads(json.dumps(results.to_json()))))
    assert "load average (1 min) at the measurements' starts: 0.40 to 3.10" in table
    assert "FIGURES UNRELIABLE: 2 of 3 measurements ran on a busy machine" in table
    assert "  - P1 pgqueuer: background 0.90 cores, steal 0.0 %, load 3.10" in table
    assert "  - P1 sql-floor: background 0.10 cores, steal 6.0 %, load 0.50" in table


def test_a_quiet_machine_is_reported_as_such_and_no_sample_as_unknown() -> None:
    results = recorded()
    assert "whether the machine was quiet is unknown" in render(results)
    results.record_conditions("pgflow-python", "P1", Conditions(0.2, 0.01, 0.0))
    assert "- quiet: all 1 measurements (figures reliable)" in render(results)


def test_the_probe_samples_this_machine() -> None:
    probe = Probe.before(seconds=0.05)
    assert probe is not None  # the tests run on Linux
    conditions = probe.after()
    assert conditions.load1 >= 0
    assert conditions.background_cores >= 0
    assert 0 <= conditions.steal_percent <= 100
