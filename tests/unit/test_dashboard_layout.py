"""Pure parts of the dashboard: DAG layout, run id prefixes, value previews."""

from __future__ import annotations

import itertools
import uuid

from pgflow.dashboard._dag import StepShape, layout
from pgflow.dashboard._data import uuid_prefix_bounds
from pgflow.dashboard._format import json_preview, text_preview


def test_steps_sit_in_the_column_of_their_longest_dependency_chain() -> None:
    steps = [
        StepShape("fetch", "single", ()),
        StepShape("left", "single", ("fetch",)),
        StepShape("slow", "single", ("left",)),
        StepShape("join", "map", ("fetch", "slow")),
    ]
    drawn = layout(steps)
    x = {node.step.slug: node.x for node in drawn.nodes}
    assert x["fetch"] < x["left"] < x["slow"] < x["join"]
    assert [(e.source, e.target) for e in drawn.edges] == [
        ("fetch", "left"),
        ("left", "slow"),
        ("fetch", "join"),
        ("slow", "join"),
    ]
    assert next(node for node in drawn.nodes if node.step.slug == "join").is_map
    assert drawn.width > x["join"]
    assert layout([]).nodes == []


def test_steps_of_one_column_do_not_overlap() -> None:
    steps = [StepShape("root", "single", ())] + [
        StepShape(f"leaf{i}", "single", ("root",)) for i in range(4)
    ]
    leaves = sorted(node.y for node in layout(steps).nodes if node.step.slug != "root")
    assert all(b - a >= 48 for a, b in itertools.pairwise(leaves))


def test_a_run_id_prefix_is_a_range_of_uuids() -> None:
    low, high = uuid_prefix_bounds("7fa6bf3b-87")
    assert low == uuid.UUID("7fa6bf3b-8700-0000-0000-000000000000")
    assert high == uuid.UUID("7fa6bf3b-87ff-ffff-ffff-ffffffffffff")
    inside = uuid.UUID("7fa6bf3b-871a-4f45-bad7-42053a90c8ac")
    assert low <= inside <= high


def test_previews_are_pretty_when_whole_and_marked_when_cut() -> None:
    whole = json_preview('{"a": [1, 2]}', 13)
    assert whole is not None
    assert not whole.truncated
    assert whole.text == '{\n  "a": [\n    1,\n    2\n  ]\n}'
    cut = json_preview('{"a": "xxxx', 5000)
    assert cut is not None
    assert cut.truncated
    assert cut.total_chars == 5000
    assert json_preview(None, None) is None
    error = text_preview("boom", 4)
    assert error is not None
    assert not error.truncated
