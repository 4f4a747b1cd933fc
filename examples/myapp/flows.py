"""Flows of the example application (see docs/defining-flows.md)."""

from __future__ import annotations

from typing import Any

from pgflow.context import Context
from pgflow.dsl import Flow, Job, map_step, step


class AnalyzeWebsite(Flow, slug="analyze_website", max_attempts=3, base_delay=1, timeout=60):
    """Fetch a page, score and summarise it in parallel, then save both."""

    @step
    def website(self, input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"url": input["url"], "text": f"Contents of {input['url']}"}

    @step(depends_on=[website])
    async def sentiment(self, deps: dict[str, Any], ctx: Context) -> float:
        return 0.8 if "good" in deps["website"]["text"] else 0.2

    @step(depends_on=[website])
    def summary(self, deps: dict[str, Any], ctx: Context) -> str:
        return str(deps["website"]["text"])[:40]

    @step(depends_on=[sentiment, summary], max_attempts=5, start_delay=1)
    def save(self, deps: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"score": deps["sentiment"], "summary": deps["summary"]}


class Thumbnails(Flow, slug="thumbnails"):
    """The flow input is a list of image names; each is resized, then uploaded."""

    @map_step
    def resize(self, item: str, ctx: Context) -> str:
        return f"{item}@200px"

    @map_step(array=resize, timeout=30)
    def upload(self, item: str, ctx: Context) -> str:
        return f"https://cdn.example/{item}"

    @step(depends_on=[upload])
    def publish(self, deps: dict[str, list[str]], ctx: Context) -> int:
        return len(deps["upload"])


class SendEmail(Job, slug="send_email", max_attempts=5):
    def perform(self, input: dict[str, str], ctx: Context) -> dict[str, str]:
        return {"sent_to": input["to"]}
