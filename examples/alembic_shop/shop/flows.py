"""The shop's flows: the revisions in ../migrations carry them as data, never by import."""

from __future__ import annotations

from typing import Any

from pgflow.dsl import Flow, Job, step


class ProcessOrder(Flow, slug="process_order", max_attempts=3, timeout=60):
    """Validate an order, then charge and reserve stock in parallel, then ship."""

    @step
    def validate(self, input: dict[str, Any]) -> dict[str, Any]:
        return {"order_id": input["order_id"], "total": input["total"]}

    @step(depends_on=[validate])
    def charge(self, deps: dict[str, Any]) -> str:
        return f"charged {deps['validate']['total']}"

    @step(depends_on=[validate])
    def reserve_stock(self, deps: dict[str, Any]) -> bool:
        return True

    @step(depends_on=[charge, reserve_stock], timeout=30)
    def ship(self, deps: dict[str, Any]) -> str:
        return "shipped"


class SendReceipt(Job, slug="send_receipt", max_attempts=5):
    def perform(self, input: dict[str, Any]) -> dict[str, Any]:
        return {"sent_to": input["email"]}
