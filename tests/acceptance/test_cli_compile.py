"""``pgflow compile`` prints the registration SQL of the flows a reference names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def compile_cli(*references: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pgflow", "compile", *references],
        capture_output=True,
        text=True,
        cwd=EXAMPLES,
        timeout=60,
        check=False,
    )


def test_compile_one_class_from_the_working_directory() -> None:
    result = compile_cli("myapp.flows:Thumbnails")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "-- flow thumbnails",
        "SELECT pgflow.create_flow('thumbnails');",
        "SELECT pgflow.add_step('thumbnails', 'resize', step_type => 'map');",
        "SELECT pgflow.add_step('thumbnails', 'upload', ARRAY['resize'], timeout => 30,"
        " step_type => 'map');",
        "SELECT pgflow.add_step('thumbnails', 'publish', ARRAY['upload']);",
    ]


def test_compile_a_module_lists_every_flow_in_order() -> None:
    result = compile_cli("myapp.flows")
    assert result.returncode == 0, result.stderr
    headers = [line for line in result.stdout.splitlines() if line.startswith("--")]
    assert headers == ["-- flow analyze_website", "-- flow thumbnails", "-- flow send_email"]
    assert "UPDATE pgflow.flows SET flow_type = 'job' WHERE flow_slug = 'send_email';" in (
        result.stdout
    )


def test_bad_references_fail_with_one_line() -> None:
    missing = compile_cli("myapp.flows:Nope")
    assert missing.returncode == 2  # a configuration mistake (docs/deployment.md)
    assert missing.stderr.count("\n") == 1
    assert missing.stderr.startswith("error: 'myapp.flows' has no attribute 'Nope'")
    not_a_flow = compile_cli("myapp.flows:Context")
    assert not_a_flow.returncode == 2
    assert "is not a concrete pgflow Flow or Job class" in not_a_flow.stderr
