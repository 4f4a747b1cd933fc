"""Lay out a flow's DAG for an SVG drawing: columns by depth, rows by declaration order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

NODE_WIDTH = 168
NODE_HEIGHT = 48
COLUMN_GAP = 56
ROW_GAP = 18
MARGIN = 12


@dataclass(frozen=True)
class StepShape:
    """What the drawing needs of a step; ``status`` and ``label`` only on a run's page."""

    slug: str
    step_type: str
    depends_on: tuple[str, ...]
    status: str | None = None
    label: str = ""


@dataclass(frozen=True)
class Node:
    step: StepShape
    x: int
    y: int
    width: int = NODE_WIDTH
    height: int = NODE_HEIGHT

    @property
    def is_map(self) -> bool:
        return self.step.step_type == "map"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    path: str  # SVG path data, a cubic curve from the source's right edge to the target's left


@dataclass(frozen=True)
class Layout:
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    width: int = 0
    height: int = 0


def layout(steps: Sequence[StepShape]) -> Layout:
    """Place each step in the column of its longest dependency chain; ``steps`` in declaration
    order, which upstream guarantees is a topological order (a step's deps come first)."""
    if not steps:
        return Layout()
    depth: dict[str, int] = {}
    for step in steps:
        depth[step.slug] = 1 + max((depth.get(dep, 0) for dep in step.depends_on), default=-1)
    columns: dict[int, list[StepShape]] = {}
    for step in steps:
        columns.setdefault(depth[step.slug], []).append(step)
    tallest = max(len(column) for column in columns.values())
    height = 2 * MARGIN + tallest * NODE_HEIGHT + (tallest - 1) * ROW_GAP
    nodes: dict[str, Node] = {}
    for column_index, column in sorted(columns.items()):
        column_height = len(column) * NODE_HEIGHT + (len(column) - 1) * ROW_GAP
        top = (height - column_height) // 2
        for row, step in enumerate(column):
            nodes[step.slug] = Node(
                step,
                x=MARGIN + column_index * (NODE_WIDTH + COLUMN_GAP),
                y=top + row * (NODE_HEIGHT + ROW_GAP),
            )
    width = 2 * MARGIN + len(columns) * NODE_WIDTH + (len(columns) - 1) * COLUMN_GAP
    edges = [
        _edge(nodes[dep], nodes[step.slug])
        for step in steps
        for dep in step.depends_on
        if dep in nodes
    ]
    return Layout(nodes=list(nodes.values()), edges=edges, width=width, height=height)


def _edge(source: Node, target: Node) -> Edge:
    x1, y1 = source.x + source.width, source.y + source.height // 2
    x2, y2 = target.x, target.y + target.height // 2
    bend = (x2 - x1) // 2
    return Edge(
        source.step.slug,
        target.step.slug,
        f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}",
    )


def shapes_from_rows(
    rows: Sequence[Mapping[str, object]],
    statuses: Mapping[str, str | None] | None = None,
    labels: Mapping[str, str] | None = None,
) -> list[StepShape]:
    """StepShapes from ``dashboard_flow_steps`` rows, with a run's statuses and labels."""
    shapes = []
    for row in rows:
        slug = str(row["step_slug"])
        depends_on = row["depends_on"]
        if not isinstance(depends_on, list | tuple):
            raise TypeError(f"depends_on of {slug!r} is {depends_on!r}, not a list")
        shapes.append(
            StepShape(
                slug=slug,
                step_type=str(row["step_type"]),
                depends_on=tuple(str(dep) for dep in depends_on),
                status=(statuses or {}).get(slug),
                label=(labels or {}).get(slug, ""),
            )
        )
    return shapes
