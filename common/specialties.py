"""Specialties are the Celery queue names; routes, CLI choices and deployments derive from here."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from common.settings import Settings, SpecialtyConfig

TRIGGER_LABEL = "forgecrew"
ROUTE_LABEL_PREFIX = "forgecrew:"


class Specialty(StrEnum):
    """Built-in specialties; each is a queue consumed by `forgecrew worker --specialty <name>`."""

    BACKEND = "backend"  # consumed by backend workers: APIs, services, data
    FRONTEND = "frontend"  # consumed by frontend workers: UI, styles, browser code
    TESTING = "testing"  # consumed by testing workers: tests, flakiness, coverage
    DEVOPS = "devops"  # consumed by devops workers: CI, containers, deployment
    GENERAL = "general"  # fallback queue when triage finds no better match


class StatusLabel(StrEnum):
    """Labels forgecrew puts on an issue to show where its task is."""

    QUEUED = "forgecrew:queued"
    WORKING = "forgecrew:working"
    PR_OPEN = "forgecrew:pr-open"
    FAILED = "forgecrew:failed"
    AWAITING_APPROVAL = "forgecrew:awaiting-approval"  # a plan is posted; `/forgecrew approve` runs it


# Put on an issue by a person: the agent posts a plan first and changes nothing until it is approved
# (the repository's `.forgecrew.yml` can ask the same with `plan_first: true`). Not a route label.
PLAN_LABEL = "forgecrew:plan"

# Put on an issue by a person: its task goes ahead of normal ones (high) or after them (low), in the
# waiting order and on the broker (tasks.priority 1 / -1). Not route labels.
PRIORITY_LABELS = {"forgecrew:priority-high": 1, "forgecrew:priority-low": -1}


def label_priority(labels: list[str]) -> int:
    """tasks.priority from an issue's labels: high wins over low, none is normal (0)."""
    found = [PRIORITY_LABELS[label] for label in labels if label in PRIORITY_LABELS]
    return max(found) if found else 0

# Seconds one agent command may run unless the specialty sets command_timeout_seconds.
DEFAULT_COMMAND_TIMEOUT = 120.0

# On a pull request whose tests still failed when it was opened (it is a draft too).
TESTS_FAILING_LABEL = "forgecrew:tests-failing"


@dataclass(frozen=True)
class SpecialtyProfile:
    """What triage and the agent need to know about one specialty."""

    name: str
    keywords: tuple[str, ...] = ()
    path_globs: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    system_prompt: str = ""
    allowed_commands: tuple[str, ...] = ()
    denied_commands: tuple[str, ...] = ()
    soft_time_limit: int | None = None
    time_limit: int | None = None
    tools: tuple[str, ...] = ()  # tool names this specialty may use; empty = all
    command_timeout_seconds: float = DEFAULT_COMMAND_TIMEOUT  # one agent command, killed at this limit
    limits: tuple[tuple[str, int], ...] = ()  # sandbox limits this specialty sets (field, value)
    setup_network: bool = False  # every setup command gets user-mode network
    command_network: bool = False  # agent commands and tests get it too (an operator's choice)


BUILTIN_PROFILES: dict[str, SpecialtyProfile] = {
    Specialty.BACKEND: SpecialtyProfile(
        name="backend",
        keywords=("api", "endpoint", "server", "database", "sql", "query", "migration", "backend",
                  "service", "model", "cache", "performance", "exception", "traceback", "crash"),
        path_globs=("*.py", "*.go", "*.rs", "*.java", "*.rb", "*.sql", "server/*", "api/*", "backend/*"),
        system_prompt="You are a backend engineer. Keep APIs backwards compatible unless the issue asks "
                      "otherwise, handle errors explicitly, and add or update a test that covers the change.",
    ),
    Specialty.FRONTEND: SpecialtyProfile(
        name="frontend",
        keywords=("ui", "frontend", "css", "style", "button", "page", "layout", "react", "vue",
                  "component", "browser", "html", "dark mode", "responsive", "accessibility"),
        path_globs=("*.tsx", "*.jsx", "*.vue", "*.svelte", "*.css", "*.scss", "*.html",
                    "frontend/*", "web/*", "ui/*"),
        system_prompt="You are a frontend engineer. Follow the existing component and styling conventions, "
                      "keep markup accessible (labels, roles, contrast), and update component tests.",
    ),
    Specialty.TESTING: SpecialtyProfile(
        name="testing",
        keywords=("test", "tests", "flaky", "coverage", "pytest", "unit test", "regression test",
                  "assertion", "fixture"),
        path_globs=("tests/*", "test/*", "*_test.go", "test_*.py", "*_test.py", "*.spec.ts", "*.test.ts"),
        system_prompt="You are a test engineer. Make tests deterministic and meaningful: each asserts "
                      "behaviour that could fail. Fix the cause of flakiness rather than adding retries or sleeps.",
    ),
    Specialty.DEVOPS: SpecialtyProfile(
        name="devops",
        keywords=("ci", "docker", "dockerfile", "deploy", "deployment", "kubernetes", "helm",
                  "pipeline", "workflow", "ansible", "terraform", "github actions", "build"),
        path_globs=(".github/workflows/*", "Dockerfile", "*.dockerfile", "docker-compose*.yml",
                    "compose*.yml", "ansible/*", "*.tf", "Makefile"),
        system_prompt="You are a devops engineer. Keep pipelines and deployment files reproducible: pin "
                      "versions, never put secrets in files, and keep changes idempotent.",
        soft_time_limit=2700,
        time_limit=3000,
    ),
    Specialty.GENERAL: SpecialtyProfile(
        name="general",
        system_prompt="You are a careful generalist engineer. Make the smallest change that resolves the issue.",
    ),
}


def _from_config(config: SpecialtyConfig, base: SpecialtyProfile | None) -> SpecialtyProfile:
    base = base or SpecialtyProfile(name=config.name)
    return SpecialtyProfile(
        name=config.name,
        keywords=tuple(config.keywords) or base.keywords,
        path_globs=tuple(config.path_globs) or base.path_globs,
        labels=tuple(config.labels) or base.labels,
        system_prompt=config.system_prompt or base.system_prompt,
        allowed_commands=tuple(config.allowed_commands) or base.allowed_commands,
        denied_commands=tuple(config.denied_commands) or base.denied_commands,
        soft_time_limit=config.soft_time_limit or base.soft_time_limit,
        time_limit=config.time_limit or base.time_limit,
        tools=tuple(config.tools) or base.tools,
        command_timeout_seconds=config.command_timeout_seconds or base.command_timeout_seconds,
        limits=_limits(config, base),
        setup_network=base.setup_network if config.setup_network is None else config.setup_network,
        command_network=base.command_network if config.command_network is None else config.command_network,
    )


def _limits(config: SpecialtyConfig, base: SpecialtyProfile) -> tuple[tuple[str, int], ...]:
    """The base's limits with the configured ones on top."""
    merged = dict(base.limits)
    if config.limits is not None:
        merged.update({key: value for key, value in config.limits.model_dump().items() if value is not None})
    return tuple(sorted(merged.items()))


def profiles(settings: Settings) -> dict[str, SpecialtyProfile]:
    """Built-in profiles with configured overrides and additions, in routing order."""
    result = {str(name): profile for name, profile in BUILTIN_PROFILES.items()}
    for config in settings.specialties:
        result[config.name] = _from_config(config, result.get(config.name))
    general = result.pop(Specialty.GENERAL.value)
    result[Specialty.GENERAL.value] = general  # the fallback stays last
    return result


def queue_names(settings: Settings) -> list[str]:
    """Every queue a deployment must have a worker for."""
    return list(profiles(settings))


def time_limits(settings: Settings, specialty: str) -> tuple[int, int]:
    """(soft, hard) seconds for one task on this specialty's queue."""
    profile = profiles(settings).get(specialty)
    soft = (profile.soft_time_limit if profile else None) or settings.default_soft_time_limit
    hard = (profile.time_limit if profile else None) or settings.default_time_limit
    return soft, max(hard, soft + 30)


def max_time_limit(settings: Settings) -> int:
    """The longest hard limit of any queue: the broker must not redeliver before it."""
    return max(time_limits(settings, name)[1] for name in queue_names(settings))
