"""Pick a specialty for an issue: a routing label wins, then keyword and path rules, then general."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Protocol

from common.specialties import (PLAN_LABEL, PRIORITY_LABELS, ROUTE_LABEL_PREFIX, Specialty, SpecialtyProfile,
                                StatusLabel)

PATH_TOKEN = re.compile(r"(?<![\w@])((?:[\w.-]+/)*[\w.-]*\.[A-Za-z0-9]{1,8}|(?:[\w.-]+/)+[\w.-]*)")
# forgecrew's own labels that name no specialty: the status ones, and the plan-first option
STATUS_LABELS = {label.value for label in StatusLabel} | {PLAN_LABEL} | set(PRIORITY_LABELS)


@dataclass(frozen=True)
class TriageDecision:
    specialty: str  # the first step's; the only one unless `specialties` names more
    reason: str
    # every specialty the issue needs, in run order (coordinator/workflow.py); () = just `specialty`
    specialties: tuple[str, ...] = ()
    confidence: float | None = None  # an LLM triage's own estimate, 0..1; None for rules and labels
    cost_usd: float | None = None  # what deciding cost (an LLM triage's model call)


class Triage(Protocol):
    """Anything that can choose a specialty: RuleTriage, or LLMTriage (coordinator/llm_triage.py) before it."""

    def __call__(self, *, title: str, body: str, labels: list[str]) -> TriageDecision: ...


def route_label_specialty(label: str) -> str | None:
    """`forgecrew:backend` -> `backend`; None for the trigger label, status, plan and priority labels."""
    if not label.startswith(ROUTE_LABEL_PREFIX) or label in STATUS_LABELS:
        return None
    return label[len(ROUTE_LABEL_PREFIX):].strip().lower() or None


URL = re.compile(r"\w+://\S+")


def mentioned_paths(text: str) -> list[str]:
    """Path-like tokens in free text, links left out."""
    return [match.group(1) for match in PATH_TOKEN.finditer(URL.sub(" ", text))]


class RuleTriage:
    """Deterministic triage over configured profiles; explains every choice."""

    def __init__(self, profiles: dict[str, SpecialtyProfile]) -> None:
        self.profiles = profiles

    def __call__(self, *, title: str, body: str, labels: list[str]) -> TriageDecision:
        routed = [(label, specialty) for label in labels if (specialty := self._label_route(label))]
        named = tuple(dict.fromkeys(specialty for _, specialty in routed))
        if len(named) > 1:  # several specialties' labels: a workflow (coordinator/workflow.py orders it)
            return TriageDecision(named[0], "labels " + ", ".join(repr(label) for label, _ in routed),
                                  specialties=named)
        if routed:
            return TriageDecision(routed[0][1], f"label {routed[0][0]!r}")
        scores = {name: self._score(profile, title, body) for name, profile in self.profiles.items()
                  if name != Specialty.GENERAL}
        best = max(scores.items(), key=lambda item: item[1][0], default=None)
        if best is None or best[1][0] == 0:
            return TriageDecision(Specialty.GENERAL.value, "no label or rule matched; fallback")
        name, (score, hits) = best
        return TriageDecision(name, f"rules (score {score}): " + ", ".join(hits[:6]))

    def routed_by_label(self, labels: list[str]) -> bool:
        """Whether a label decides (then no model is asked: a person already chose)."""
        return any(self._label_route(label) for label in labels)

    def _label_route(self, label: str) -> str | None:
        specialty = route_label_specialty(label)
        if specialty in self.profiles:
            return specialty
        for name, profile in self.profiles.items():
            if label in profile.labels:
                return name
        return None

    @staticmethod
    def _score(profile: SpecialtyProfile, title: str, body: str) -> tuple[int, list[str]]:
        score, hits = 0, []
        lowered_title, lowered_body = title.lower(), body.lower()
        for keyword in profile.keywords:
            pattern = re.compile(rf"\b{re.escape(keyword.lower())}\b")
            if pattern.search(lowered_title):
                score, hits = score + 2, [*hits, f"keyword {keyword!r} in title"]
            elif pattern.search(lowered_body):
                score, hits = score + 1, [*hits, f"keyword {keyword!r}"]
        for path in mentioned_paths(f"{title}\n{body}"):
            glob = next((g for g in profile.path_globs if _path_matches(path, g)), None)
            if glob:
                score, hits = score + 3, [*hits, f"path {path} ~ {glob}"]
        return score, hits


def _path_matches(path: str, glob: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return fnmatch.fnmatch(path, glob) or fnmatch.fnmatch(name, glob) or path.startswith(glob.rstrip("*"))


path_matches = _path_matches  # public: coordinator/workflow.py routes a workflow's follow-ups by the same test
