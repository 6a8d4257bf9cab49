"""One settings object for every process, read from FORGECREW_* variables and forgecrew.toml."""

from __future__ import annotations

import difflib
import logging
import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from common.database_url import check_database_url
from common.errors import SettingsError
from common.home import StateHome, default_home

log = logging.getLogger(__name__)

ENV_PREFIX = "FORGECREW_"
CONFIG_FILE_VARIABLE = "FORGECREW_CONFIG"
DEFAULT_CONFIG_FILE = "forgecrew.toml"
# FORGECREW_* variables that are not settings: the config file's name, and the test suite's own.
NOT_SETTINGS = {CONFIG_FILE_VARIABLE, "FORGECREW_FIXTURES"}
NOT_SETTINGS_PREFIXES = ("FORGECREW_TEST_",)
PLACEHOLDER_SECRETS = {"changeme", "changethis", "secret", "password", "xxx", "todo", "…", "..."}

# Secrets `forgecrew up` generates into HOME/secrets when unset; every command reads them back.
GENERATED_SECRETS = ("webhook_secret", "api_token", "flower_password")

CommaList = Annotated[list[str], NoDecode]


def autoscale_range(text: str) -> tuple[int, int]:
    """"MAX,MIN" (Celery's --autoscale order) as (max, min); a readable ValueError otherwise."""
    parts = [part.strip() for part in str(text).split(",")]
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        raise ValueError(f"autoscale {text!r} is not MAX,MIN (two whole numbers, e.g. 8,1)")
    maximum, minimum = int(parts[0]), int(parts[1])
    if minimum < 1:  # a worker with no slot has prefetch 0, which the broker reads as "no limit"
        raise ValueError(f"autoscale {text!r}: MIN must be at least 1")
    if minimum > maximum:
        raise ValueError(f"autoscale {text!r}: MIN ({minimum}) is above MAX ({maximum}); the order is MAX,MIN")
    return maximum, minimum


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class LimitsConfig(BaseSettings):
    """Per-specialty overrides of the sandbox's limits (forgecrew.toml `limits = { memory_mb = 4096 }`)."""

    model_config = SettingsConfigDict(extra="forbid")

    memory_mb: int | None = Field(None, gt=0, description="Writable memory of each process, in MB.")
    processes: int | None = Field(None, gt=0, description="Processes and threads of one command at once.")
    cpu_seconds: int | None = Field(None, gt=0, description="CPU time of each process.")
    file_size_mb: int | None = Field(None, gt=0, description="The largest file a command may write, in MB.")
    open_files: int | None = Field(None, gt=0, description="Open files of each process.")
    output_mb: int | None = Field(None, gt=0, description="Output read before a command is stopped, in MB.")


class SpecialtyConfig(BaseSettings):
    """A specialty added or overridden by configuration (forgecrew.toml [[specialties]])."""

    model_config = SettingsConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,39}$", description="Queue and label suffix.")
    labels: list[str] = Field(default_factory=list, description="Extra labels that route here.")
    keywords: list[str] = Field(default_factory=list, description="Title/body words that suggest it.")
    path_globs: list[str] = Field(default_factory=list, description="Mentioned paths that suggest it.")
    system_prompt: str = Field("", description="Appended to the shared agent prompt.")
    allowed_commands: list[str] = Field(default_factory=list, description="Command prefixes allowed; empty = all.")
    denied_commands: list[str] = Field(default_factory=list, description="Command prefixes always refused.")
    tools: list[str] = Field(default_factory=list, description="Tool names allowed; empty = all.")
    command_timeout_seconds: float | None = Field(None, gt=0, description="Seconds before one agent command "
                                                  "(run_command, search) is killed; default 120.")
    soft_time_limit: int | None = Field(None, description="Seconds before the task is asked to stop.")
    time_limit: int | None = Field(None, description="Seconds before the task's process is killed.")
    limits: LimitsConfig | None = Field(None, description="Sandbox limits of this specialty's commands.")
    setup_network: bool | None = Field(None, description="Give every setup command of this specialty user-mode "
                                       "network (as a repository's `setup_network: true` does).")
    command_network: bool | None = Field(None, description="Give this specialty's agent commands and tests "
                                         "user-mode network too (an operator's choice; off by default).")
    autoscale: str | None = Field(None, description="MAX,MIN agent tasks this specialty's worker scales between "
                                  "on its queue's depth (overrides worker_autoscale for it).")

    @field_validator("autoscale")
    @classmethod
    def _autoscale(cls, value: str | None) -> str | None:
        if value is not None:
            autoscale_range(value)
        return value

    @field_validator("tools")
    @classmethod
    def _known_tools(cls, value: list[str]) -> list[str]:
        """A misspelt tool would silently leave the agent without it (e.g. unable to edit)."""
        from common.tool_names import TOOL_NAMES, unknown_tools

        unknown = unknown_tools(value)
        if unknown:
            guesses = [f"{name!r}" + (f" (did you mean {guess!r}?)" if (guess := _guess(name, TOOL_NAMES)) else "")
                       for name in unknown]
            raise ValueError(f"unknown tool {', '.join(guesses)}; known tools: {', '.join(TOOL_NAMES)}")
        return value


class Settings(BaseSettings):
    """Every knob of forgecrew; environment variables override forgecrew.toml."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    home: Path = Field(default_factory=default_home, description="State folder of single-host mode: the "
                       "default database, embedded broker, workspaces, local forge and generated secrets "
                       "(default $XDG_DATA_HOME/forgecrew or ~/.local/share/forgecrew).")
    database_url: str = Field("", description="SQLAlchemy URL of the state database (default: SQLite in HOME).")
    broker_url: str = Field("", description="Celery broker, Redis or RabbitMQ (default: the embedded broker "
                            "`forgecrew up` runs on a unix socket in HOME).")
    webhook_secret: SecretStr | None = Field(None, description="GitHub webhook secret for HMAC-SHA256.")
    api_token: SecretStr | None = Field(None, description="Bearer token for the REST API.")
    metrics_token: SecretStr | None = Field(None, description="Bearer token /metrics requires when set; "
                                            "unset, /metrics is open (it carries counts, no repository names).")
    flower_user: str = Field("forgecrew", min_length=1, description="Flower's basic-auth user.")
    flower_password: SecretStr | None = Field(None, description="Flower's basic-auth password (`up` generates "
                                              "one when unset; `forgecrew flower` requires it).")
    repo_allowlist: CommaList = Field(default_factory=list, description="owner/name patterns, shell wildcards.")
    trusted_associations: CommaList = Field(
        default_factory=lambda: ["OWNER", "MEMBER", "COLLABORATOR"],
        description="Author associations whose labelled new issues may start work.",
    )
    max_webhook_bytes: int = Field(25 * 1024 * 1024, gt=0, description="GitHub caps payloads at 25 MB.")

    forge: Literal["github", "local"] = Field("github", description="Where branches and PRs go.")
    local_forge_root: Path = Field(Path(), description="Bare repos of the local forge (default: HOME/forge).")
    github_token: SecretStr | None = Field(None, description="Personal or installation token.")
    github_app_id: int | None = Field(None, description="GitHub App id, instead of a token.")
    github_app_private_key: SecretStr | None = Field(None, description="PEM text or a path to it.")
    github_app_installation_id: int | None = Field(None, description="App installation for work no webhook "
                                                   "started (forgecrew run); webhooks carry their own.")
    github_api_url: str = Field("https://api.github.com", description="REST API base URL.")
    clone_url_template: str | None = Field(None, description="e.g. file:///srv/git/{full_name}.git")
    github_write_interval_seconds: float = Field(1.0, ge=0, description="Spacing of GitHub writes "
                                                 "(secondary rate limits).")
    progress_edit_interval_seconds: float = Field(10.0, ge=0, description="Least time between two edits of a "
                                                  "task's progress comment; the last state is always written.")
    queued_notice_seconds: float = Field(15.0, ge=0, description="A task still waiting for a worker this long "
                                         "after it was sent says so in its progress comment (0: never).")
    dependency_check_seconds: float = Field(300.0, gt=0, description="How often the reconciler asks the forge "
                                            "whether an issue a waiting task depends on (\"depends on #N\") is "
                                            "closed or its forgecrew PR merged (a new one is asked about at once), "
                                            "and whether the PR a serialized overlapping task waits for has merged "
                                            "or closed: in case the webhook was missed, or the forge sends none.")
    max_followups_per_pr: int = Field(5, ge=0, description="Follow-up runs (reviews, PR comments) per pull "
                                      "request; past them forgecrew says on the PR that a person is needed.")
    max_ci_fixes_per_pr: int = Field(3, ge=0, description="Follow-up runs that try to fix a pull request's own "
                                     "failing CI (check runs, commit statuses); past them forgecrew says once on "
                                     "the PR that a person is needed.")
    bot_name: str = Field("forgecrew[bot]", description="Commit author name.")
    bot_email: str = Field("forgecrew@users.noreply.github.com", description="Commit author email.")

    anthropic_api_key: SecretStr | None = Field(None, description="Anthropic API key.")
    anthropic_base_url: str | None = Field(None, description="Messages API base URL override.")
    model: str = Field("claude-sonnet-4-6", description="Model name, free-form.")
    fallback_models: CommaList = Field(default_factory=list, description="Tried in order on overload.")
    model_timeout_seconds: float = Field(600.0, gt=0, description="Seconds one model request may wait for "
                                         "the API (its answer, or the next streamed chunk) before it is retried.")
    max_turns: int = Field(60, gt=0, description="Model calls per run.")
    max_output_tokens: int = Field(200_000, gt=0, description="Output tokens per run.")
    max_wall_seconds: int = Field(1800, gt=0, description="Wall time of one agent run.")
    max_cost_usd: float = Field(5.0, gt=0, description="Spend per run, for priced models.")
    repair_rounds: int = Field(2, ge=0, description="Extra agent rounds after failing tests.")
    triage_llm: bool = Field(False, description="When no routing label decides, ask triage_model which "
                             "specialties an issue needs (after the webhook is answered); the rules decide "
                             "when it fails or is unsure.")
    triage_model: str = Field("claude-haiku-4-5", description="The small model LLM triage asks.")
    triage_confidence_threshold: float = Field(0.7, ge=0, le=1, description="LLM triage's least confidence "
                                               "(0..1) to be followed; below it the rules decide.")
    triage_max_cost_usd: float = Field(0.02, gt=0, description="Most one LLM triage may cost (estimated "
                                       "before asking, for priced models); dearer issues are left to the rules.")
    triage_timeout_seconds: float = Field(20.0, gt=0, description="Seconds one LLM triage request may wait "
                                          "for the model (it is retried once).")
    triage_concurrency: int = Field(4, ge=1, description="LLM triage requests one coordinator process makes "
                                    "at once.")
    triage_pending_grace_seconds: float = Field(120.0, gt=0, description="Age after which a task still "
                                                "waiting for LLM triage (its coordinator stopped) is "
                                                "classified by the reconciler.")
    command_sandbox: Literal["auto", "bubblewrap", "none"] = Field(
        "auto", description="What runs the agent's and the repository's commands: auto = the strongest sandbox "
                            "that works here (bubblewrap), refusing to start without one; bubblewrap = required; "
                            "none = unconfined, as the worker's user (logged loudly and recorded on every run).")
    sandbox_uid: int = Field(65534, ge=1, description="User the commands run as when the worker runs as root "
                             "(nobody); an unprivileged worker's commands run as the worker's own user.")
    sandbox_gid: int = Field(65534, ge=1, description="Group of sandbox_uid.")
    sandbox_nice: int = Field(10, ge=0, le=19, description="Niceness of commands, so the worker stays responsive.")
    sandbox_read_only_paths: CommaList = Field(default_factory=list, description="Extra directories shown "
                                               "read-only inside the sandbox (toolchains outside /usr).")
    sandbox_network: bool = Field(True, description="Whether any phase may get user-mode network at all; false "
                                  "keeps every command offline, whatever a repository or specialty asks.")
    sandbox_blocked_networks: CommaList = Field(default_factory=list, description="CIDRs a networked sandbox "
                                                "must not reach, beyond private ranges and the host's networks.")
    sandbox_memory_mb: int = Field(2048, gt=0, description="Writable memory of each process of a command, MB.")
    sandbox_processes: int = Field(256, gt=0, description="Processes and threads one command may have at once.")
    sandbox_cpu_seconds: int = Field(600, gt=0, description="CPU time of each process of a command.")
    sandbox_file_size_mb: int = Field(1024, gt=0, description="The largest file a command may write, MB.")
    sandbox_open_files: int = Field(1024, gt=0, description="Open files of each process of a command.")
    sandbox_output_mb: int = Field(16, gt=0, description="Output of one command read before it is stopped, MB.")

    workspace_root: Path = Field(Path(), description="Mirrors and per-task checkouts (default: "
                                 "HOME/workspaces).")
    workspace_retention_days: float = Field(7.0, ge=0, description="Age before gc removes a task dir.")
    workspace_pool_size: int = Field(1, ge=0, description="Checkouts of each repository kept ready per worker "
                                     "host, so a task's checkout is a rename (0: write each checkout).")

    lease_seconds: int = Field(120, ge=2, description="A running task's lease; heartbeats renew it.")
    reaper_interval_seconds: float = Field(30.0, gt=0, description="How often stale leases are reaped.")
    max_attempts: int = Field(3, ge=1, description="Runs of a task before a lost worker fails it.")
    dispatch_timeout_seconds: float = Field(3.0, gt=0, description="Broker send timeout.")
    broker_start_timeout_seconds: float = Field(10.0, ge=0, description="How long `worker` and `reconcile` "
                                                "wait for the broker at start before refusing to run; once "
                                                "running they reconnect for ever.")
    queued_resend_seconds: float = Field(1800.0, gt=0, description="Age after which a queued task is resent "
                                         "if its message left a Redis broker (on AMQP: resent at this age).")
    max_running_per_repo: int = Field(0, ge=0, description="Tasks of one repository queued or running at once; "
                                      "more wait in `waiting` (0: unlimited).")
    max_running_per_installation: int = Field(0, ge=0, description="Tasks of one GitHub App installation queued "
                                              "or running at once; more wait in `waiting` (0: unlimited).")
    max_tasks_per_requester_per_day: int = Field(0, ge=0, description="Tasks one person may start in 24 hours "
                                                 "(a task counts once, when first sent); more wait (0: unlimited).")
    rabbitmq_priority_queues: bool = Field(False, description="Declare RabbitMQ queues with x-max-priority so "
                                           "priority labels reorder them. RabbitMQ refuses to redeclare an "
                                           "existing queue with new arguments: turn on for a new virtual host, or "
                                           "drain and delete the queues first. Redis always honours priorities.")
    worker_pool: Literal["threads", "prefork", "solo"] = Field(
        "threads", description="How a worker runs its agent tasks: threads in one process (sessions mostly "
        "wait on the model), prefork (a process each) or solo (one at a time).")
    worker_concurrency: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="Agent tasks one worker process runs at once; auto sizes it to the host's cores "
        "and memory (16 a core with threads, 1 a core with prefork).")
    worker_autoscale: str | None = Field(
        None, description="MAX,MIN: a worker grows to MAX agent tasks at once while its queues hold waiting "
        "messages and shrinks back to MIN once they drain (see docs/autoscaling.md); unset = fixed "
        "worker_concurrency.")
    worker_autoscale_cooldown_seconds: float = Field(
        30.0, gt=0, description="Seconds an autoscaled worker keeps slots it no longer needs before it shrinks.")
    worker_autoscale_interval_seconds: float = Field(
        2.0, gt=0, description="Seconds between two reads of an autoscaled worker's queue depth.")
    default_soft_time_limit: int = Field(3600, gt=0, description="Seconds before a task is asked to stop.")
    default_time_limit: int = Field(3900, gt=0, description="Seconds before a task is killed.")
    specialties: list[SpecialtyConfig] = Field(default_factory=list, description="Extra specialties.")
    workflow_order: CommaList = Field(
        ["backend", "frontend", "devops", "testing"],
        description="The order a multi-specialty issue's steps run in (coordinator/workflow.py); a specialty "
        "not listed runs just before `testing` (at the end if `testing` is not listed), in the order given.")

    @model_validator(mode="after")
    def _home_defaults(self) -> Settings:
        """Unset locations fall back to the state folder; generated secrets are read back from it."""
        home = StateHome(self.home)
        self.home = home.root
        if not self.database_url:
            self.database_url = home.database_url
        if not self.broker_url:
            self.broker_url = home.broker_url
        if self.local_forge_root == Path():
            self.local_forge_root = home.forge
        if self.workspace_root == Path():
            self.workspace_root = home.workspaces
        for name in GENERATED_SECRETS:
            if getattr(self, name) is None:
                stored = home.stored_secret(name)
                if stored:
                    setattr(self, name, SecretStr(stored))
        return self

    @property
    def state_home(self) -> StateHome:
        return StateHome(self.home)

    @property
    def uses_embedded_broker(self) -> bool:
        """True when the broker is the one `forgecrew up` starts in HOME, not one the operator runs."""
        return self.broker_url == self.state_home.broker_url

    @field_validator("repo_allowlist", "trusted_associations", "fallback_models", "sandbox_read_only_paths",
                     "sandbox_blocked_networks", "workflow_order", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("trusted_associations")
    @classmethod
    def _upper(cls, value: list[str]) -> list[str]:
        return [item.upper() for item in value]

    @field_validator("worker_autoscale")
    @classmethod
    def _autoscale(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        autoscale_range(value)
        return value.strip()

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, value: str) -> str:
        if value:  # empty: the SQLite database in HOME
            check_database_url(value)
        return value

    @field_validator("sandbox_read_only_paths")
    @classmethod
    def _absolute(cls, value: list[str]) -> list[str]:
        relative = [path for path in value if not os.path.isabs(path)]
        if relative:
            raise ValueError(f"must be absolute paths: {', '.join(relative)}")
        return value

    @field_validator("sandbox_blocked_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not a network (write it like 203.0.113.0/24)") from None
        return value

    @field_validator("webhook_secret", "api_token", "flower_password", "metrics_token")
    @classmethod
    def _no_placeholder(cls, value: SecretStr | None) -> SecretStr | None:
        """An empty value stays unset (`require` names it); a blank, "…" or "<your secret>" is a copied example."""
        text = value.get_secret_value() if value is not None else ""
        stripped = text.strip()
        if text and (not stripped or stripped.lower() in PLACEHOLDER_SECRETS
                     or (stripped.startswith("<") and stripped.endswith(">"))):
            raise ValueError("is a placeholder; set a random secret (e.g. `openssl rand -hex 32`)")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = config_file()
        if toml_path is not None:
            check_config_file(toml_path, settings_cls.model_fields)
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    def require(self, *names: str, purpose: str) -> None:
        """Fail early, naming each missing variable, before a process starts serving."""
        missing = [name for name in names if not self.is_set(name)]
        if missing:
            variables = ", ".join(ENV_PREFIX + name.upper() for name in missing)
            raise SettingsError(f"{variables} must be set: {purpose}")

    def require_worker(self) -> None:
        """Refuse to start a worker that would fail every task for want of a credential."""
        if self.forge == "github" and not self.is_set("github_token"):
            missing = [name for name in ("github_app_id", "github_app_private_key") if not self.is_set(name)]
            if missing:
                named = " and ".join(ENV_PREFIX + name.upper() for name in missing)
                raise SettingsError(f"FORGECREW_GITHUB_TOKEN, or {named}, must be set: workers push branches and "
                                    "open pull requests on GitHub (or set FORGECREW_FORGE=local)")
        self.require("anthropic_api_key", purpose="the agent calls the Anthropic Messages API "
                                                  "(behind a proxy that adds its own key, any value will do)")

    def is_set(self, name: str) -> bool:
        """Whether a setting has a value; an empty string in the environment counts as unset."""
        value = getattr(self, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        return value not in (None, "", [])

    def secret(self, name: str) -> str:
        """The plain value of a secret setting, for the one call that needs it."""
        value = getattr(self, name)
        return value.get_secret_value() if value is not None else ""


def config_file() -> Path | None:
    """The TOML file to read: the one FORGECREW_CONFIG names (which must exist), else ./forgecrew.toml if any."""
    named = os.environ.get(CONFIG_FILE_VARIABLE)
    if named:
        path = Path(named)
        if not path.is_file():
            raise SettingsError(f"{CONFIG_FILE_VARIABLE}={named}: no such file")
        return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def check_config_file(path: Path, known: Iterable[str]) -> None:
    """Refuse a file that is not TOML or names a setting that does not exist, in one line."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read it: {exc}") from None
    fields = set(known)
    unknown = [key for key in data if key.lower() not in fields]
    if unknown:
        problems = []
        for key in unknown:
            guess = _guess(key, fields)
            problems.append(f"unknown setting {key!r}" + (f" (did you mean {guess!r}?)" if guess else ""))
        raise SettingsError(f"{path}: " + "; ".join(problems))


def _guess(name: str, known: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(name.lower(), sorted(known), n=1)
    return matches[0] if matches else None


def warn_unknown_variables(environ: Mapping[str, str], known: Iterable[str]) -> list[str]:
    """Log each FORGECREW_* variable that is no setting: a typo would otherwise pass in silence.

    A warning, not a refusal: shells and service files carry variables for other versions and
    tools, and an unknown variable changes nothing. The TOML file is forgecrew's own, so an
    unknown key there is refused instead.
    """
    fields = set(known)
    found = []
    for variable in sorted(environ):
        upper = variable.upper()
        if not upper.startswith(ENV_PREFIX) or upper in NOT_SETTINGS or upper.startswith(NOT_SETTINGS_PREFIXES):
            continue
        name = upper[len(ENV_PREFIX):].lower()
        if name not in fields:
            guess = _guess(name, fields)
            log.warning("%s is not a forgecrew setting; ignored%s", variable,
                        f" (did you mean {ENV_PREFIX}{guess.upper()}?)" if guess else "")
            found.append(variable)
    return found


def load_settings(**overrides: Any) -> Settings:
    """Read settings now, turning validation errors into one message per variable."""
    warn_unknown_variables(os.environ, Settings.model_fields)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")  # our validators' messages stand alone
            problems.append(f"{ENV_PREFIX}{field.upper()}: {message}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
