"""Task groups' errors as callers expect them: shared by the worker and the testing helpers."""

from __future__ import annotations


def sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Task groups wrap even a single error; unwrap it so callers see e.g. FlowNotReadyError
    (the group itself when it holds several)."""
    leaves: list[BaseException] = []

    def collect(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                collect(inner)
        else:
            leaves.append(error)

    collect(group)
    return leaves[0] if len(leaves) == 1 else group
