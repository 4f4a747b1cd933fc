"""``@subflow``: a step that runs another flow and waits for it (docs/waiting.md)::

    class Checkout(Flow, slug="checkout"):
        @step
        def cart(self, input: dict) -> list[dict]: ...

        @subflow(ChargeCard, array=cart)           # one ChargeCard run per element
        def charges(self, item: dict) -> dict:     # the child's input
            return {"amount": item["price"]}

The decorated method turns the step's input into the child's input; a Python worker serving
the parent flow runs it (never a TypeScript worker: the step has no message in the flow's
queue), then the database starts the child and the step waits, holding no worker, until the
child run ends. The child's output is the step's output; a failed child fails the step and
the run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Unpack

from pgflow.definition import STEP_OPTIONS, FlowOptions, StepDefinition, StepType, options_given
from pgflow.dsl import HandlerFunction, StepMethod, _condition
from pgflow.errors import FlowDefinitionError

if TYPE_CHECKING:
    from pgflow.dsl import Flow


class SubflowStepMethod(StepMethod):
    """A step declared with :func:`subflow`: its method computes a child run's input."""

    def __init__(
        self,
        function: HandlerFunction,
        *,
        child: str,
        child_class: type[Flow] | None = None,
        step_type: StepType,
        depends_on: Sequence[StepMethod | str],
        slug: str | None,
        options: dict[str, int | None],
    ) -> None:
        super().__init__(
            function,
            step_type=step_type,
            depends_on=depends_on,
            slug=slug,
            options=options,
            condition=_condition(None, None, None, None),
        )
        self.child = child
        self.child_class = child_class
        """The child's class when given as one (``pgflow.testing.run_flow_inline`` serves it)."""

    def __repr__(self) -> str:
        return f"<subflow step {self.slug!r} running {self.child!r}>"

    @property
    def has_handler(self) -> bool:
        # Not a handler of the flow's queue: the subflow starter runs the method.
        return False

    def definition(self) -> StepDefinition:
        return replace(super().definition(), subflow=self.child)


def _child_slug(child: object) -> str:
    if isinstance(child, str):
        return child
    definition = vars(child).get("__pgflow_definition__") if isinstance(child, type) else None
    slug = getattr(definition, "slug", None)
    if not isinstance(slug, str):
        raise FlowDefinitionError(
            f"subflow() takes a Flow class or a flow slug, got {child!r}"
            + (" (an abstract base class is not a flow)" if isinstance(child, type) else "")
        )
    return slug


def subflow(
    child: type[Flow] | str,
    *,
    depends_on: Sequence[StepMethod | str] = (),
    array: StepMethod | str | None = None,
    slug: str | None = None,
    **options: Unpack[FlowOptions],
) -> Callable[[HandlerFunction], StepMethod]:
    """Declare a step that runs a flow of its own (``child``: a Flow class, or its slug for a
    flow defined later) and waits for that run to end; the child run's output is the step's
    output, a failed child fails the step and the run.

    The method gets the step's input (as a ``@step`` handler: the flow input, or
    ``{dependency: output}``; with ``array=step``, one element of that step's array output, and
    then one child run per element) and returns the child's input. Python workers serving the
    flow run it (``max_attempts``, ``base_delay`` and ``timeout`` apply to it); a retry or a
    second worker never starts a second child for the same task. A flow that is its own
    subflow, directly or through others, is refused when the class is defined.
    """
    if isinstance(depends_on, (str, StepMethod)):
        depends_on = [depends_on]
    if array is not None and depends_on:
        raise FlowDefinitionError(
            "subflow(array=...) maps over that step's output, so it takes no depends_on"
        )
    child_slug = _child_slug(child)
    given = options_given(options, STEP_OPTIONS, "subflow()")

    def decorate(function: HandlerFunction) -> StepMethod:
        return SubflowStepMethod(
            function,
            child=child_slug,
            child_class=child if isinstance(child, type) else None,
            step_type=StepType.MAP if array is not None else StepType.SINGLE,
            depends_on=[array] if array is not None else depends_on,
            slug=slug,
            options=given,
        )

    return decorate
