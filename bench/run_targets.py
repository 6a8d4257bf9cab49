"""The figures bench/run.py reports, in table order, with issue 9's target for each (None: context only)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One figure: its unit, what it measures, and the target a person reads it against."""

    unit: str
    what: str
    at_least: float | None = None
    at_most: float | None = None

    @property
    def target(self) -> str:
        if self.at_least is not None:
            return f">= {self.at_least:g}"
        if self.at_most is not None:
            return f"<= {self.at_most:g}"
        return ""

    def met(self, value: float) -> bool | None:
        """Whether `value` meets the target; None when the figure has none."""
        if self.at_least is not None:
            return value >= self.at_least
        if self.at_most is not None:
            return value <= self.at_most
        return None


FIGURES: dict[str, Figure] = {
    "intake.rps": Figure("req/s", "signed deliveries a second through the coordinator, 16 connections"),
    "intake.bare_rps": Figure("req/s", "a bare signature-checking endpoint, same load: the baseline"),
    "intake.ratio": Figure("", "intake.rps / intake.bare_rps", at_least=0.40),
    "intake.durable_rps": Figure("req/s", "the same endpoint committing one row per delivery: any durable intake's floor"),
    "intake.durable_ratio": Figure("", "intake.durable_rps / intake.bare_rps: what one commit costs here"),
    "intake.p50_ms": Figure("ms", "median delivery latency, 16 connections"),
    "intake.p99_ms": Figure("ms", "99th percentile delivery latency, 16 connections", at_most=50),
    "label_to_model.p50_s": Figure("s", "label to first model request, large repository, warm host", at_most=0.5),
    "label_to_model.p99_s": Figure("s", "the same, 99th percentile"),
    "workspace.full_clone_s": Figure("s", "git clone --no-local of the large repository: the baseline"),
    "workspace.workspace_s": Figure("s", "a task's workspace ready on the large repository"),
    "workspace.ratio": Figure("", "workspace.workspace_s / workspace.full_clone_s", at_most=0.04),
    "workspace.disk_ratio": Figure("", "disk per task / size of a plain checkout", at_most=1.1),
    "overhead.p50_s": Figure("s", "pipeline time per task minus model and test time, large repository",
                             at_most=1.0),
    "concurrency.sessions": Figure("", "sessions one 2-core host holds at >= 90 % of ideal (model answers in 2 s)",
                                   at_least=32),
    "concurrency.efficiency": Figure("", "ideal time / measured time at that many sessions", at_least=0.90),
    "concurrency.mb_per_session": Figure("MB", "resident memory per session", at_most=60),
    "tokens.cache_read_share": Figure("", "cache-read share of input tokens over a 10-turn session", at_least=0.80),
    "sandbox.overhead_ms": Figure("ms", "bubblewrap `true` minus plain `bash -c true`, per command", at_most=20),
}
