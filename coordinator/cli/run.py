"""`forgecrew run`: one issue through the whole pipeline in this process, no broker needed."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click

from common import migrate
from common.db import Database
from common.errors import SettingsError
from common.forge.factory import make_forge
from common.leases import Heartbeat, claim
from common.settings import Settings
from common.specialties import profiles
from common.states import TaskState
from common.transitions import transition
from coordinator.cli import cli, fails_cleanly, settings_from
from coordinator.intake import ActiveTaskExists, NewTask, create_task
from coordinator.triage import RuleTriage, TriageDecision

# GitHub's rules: owner of letters, digits and inner hyphens; name of letters, digits, '.', '_' and '-'
OWNER_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")
# The pipeline's last progress lines; the run's one line on stderr says the same, so they are not echoed.
ENDING_PREFIXES = ("failed: ", "stopped: ")


def local_repository(repo: str) -> Path | None:
    """The directory --repo names, or None for OWNER/NAME on the forge; anything else is a usage error.

    Checked before any credential or database is touched: a mistyped path must not turn into a
    request for a GitHub token or a failed task.
    """
    path = Path(repo).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise click.BadParameter(f"{repo}: not a directory", param_hint="--repo")
    if repo.startswith((".", os.sep, "~")) or repo.count(os.sep) > 1:
        raise click.BadParameter(f"{repo}: no such directory", param_hint="--repo")
    if "/" not in repo:
        raise click.BadParameter(f"{repo}: no such directory, and not OWNER/NAME of a repository on the forge",
                                 param_hint="--repo")
    if not OWNER_NAME.match(repo):
        raise click.BadParameter(f"{repo!r} is not OWNER/NAME (owner: letters, digits and '-'; name: letters, "
                                 "digits, '.', '_' and '-')", param_hint="--repo")
    return None


def show_progress(task_id: int) -> Callable[[str], None]:
    """Progress on stdout, except the run's ending, which the exit line on stderr reports once."""

    def show(message: str) -> None:
        if not message.startswith(ENDING_PREFIXES):
            click.echo(f"[task {task_id}] {message}")

    return show


def import_local_repo(settings: Settings, path: Path) -> str:
    """Mirror a local repository into the local forge as local/<name>; returns that name."""
    top = subprocess.run(["git", "-C", str(path), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if top.returncode != 0:
        raise SettingsError(f"{path} is not a git repository: {top.stderr.strip()}")
    source = Path(top.stdout.strip())
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", source.name).strip("-.") or "repo"
    bare = settings.local_forge_root / "local" / f"{name}.git"
    if not bare.exists():
        bare.parent.mkdir(parents=True, exist_ok=True)
        _git("clone", "--quiet", "--bare", str(source), str(bare))
    else:
        _git("-C", str(bare), "fetch", "--quiet", str(source), "+refs/heads/*:refs/heads/*")
    return f"local/{name}"


def _git(*args: str) -> None:
    done = subprocess.run(["git", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SettingsError(f"git {args[0]} failed: {done.stderr.strip()}")


@cli.command()
@click.option("--repo", required=True, help="A local git repository (path), or owner/name on the configured forge.")
@click.option("--issue", type=int, help="Issue number to resolve.")
@click.option("--title", help="What to do, when there is no issue.")
@click.option("--body", default="", help="Details, when there is no issue.")
@click.option("--specialty", help="Skip triage and use this specialty.")
@click.pass_context
@fails_cleanly
def run(ctx: click.Context, repo: str, issue: int | None, title: str | None, body: str,
        specialty: str | None) -> None:
    """Run one issue (or a --title/--body request) through clone, agent, tests and PR, printing progress.

    There is no Celery time limit here. The agent's budgets bound the run and it fails naming the
    one it hit: FORGECREW_MAX_WALL_SECONDS (wall time, default 1800), FORGECREW_MAX_TURNS,
    FORGECREW_MAX_OUTPUT_TOKENS and FORGECREW_MAX_COST_USD. Each agent command also stops at the
    specialty's command_timeout_seconds (default 120) and never outlasts the wall-time budget;
    setup and test commands stop at test_timeout from .forgecrew.yml (default 900 s each).
    """
    from workers.llm import LLMClient
    from workers.pipeline import Pipeline
    from workers.sandbox import make_sandbox, make_undumpable

    make_undumpable()  # our /proc files hold the keys: closed to other processes of this user

    if issue is None and not title:
        raise click.UsageError("give --issue N, or --title (and optionally --body)")
    local_source = local_repository(repo)
    path = Path(repo).expanduser()
    settings = settings_from(ctx)
    if issue is not None and local_source:
        raise click.UsageError(f"{path} is a local repository, which has no issues: describe the work with "
                               "--title and --body instead of --issue")
    settings.require("anthropic_api_key", purpose="the agent calls the Anthropic Messages API")
    make_sandbox(settings)  # no sandbox on this host: say so before touching the forge or the database
    if local_source:
        settings = settings.model_copy(update={"forge": "local", "local_forge_root": settings.local_forge_root.absolute()})
        repo = import_local_repo(settings, path)
        click.echo(f"using {path} as {repo} on the local forge at {settings.local_forge_root}")
    migrate.upgrade(settings)
    db = Database(settings)
    forge = make_forge(settings)
    if issue is not None:
        info = forge.get_issue(repo, issue)
        title, body = info.title, info.body
    task_id = _create(db, settings, repo, issue, title or "", body, specialty)
    held = claim(db, task_id, f"run/{socket.gethostname()}")
    if held is None:
        raise SettingsError(f"task {task_id} could not be claimed")
    with Heartbeat(db, held) as beat:
        pipeline = Pipeline(settings, db, lambda: forge, llm_factory=lambda: LLMClient.from_settings(settings),
                            progress=show_progress(task_id))
        outcome = pipeline.run(held, should_stop=beat.stop_reason)
    db.dispose()
    if outcome.state != TaskState.PR_OPEN:
        click.echo(f"forgecrew: task {task_id} {outcome.state}: {outcome.reason}", err=True)
        sys.exit(1)
    click.echo(f"task {task_id}: pull request {outcome.pr.url if outcome.pr else ''}")
    if local_source and outcome.pr:
        bare = make_forge(settings).clone_url(repo)
        click.echo(f"see the change: git -C {local_source} fetch {bare} {outcome.pr.branch} && "
                   f"git -C {local_source} diff HEAD FETCH_HEAD")


def _create(db: Database, settings: Settings, repo: str, issue: int | None, title: str, body: str,
            specialty: str | None) -> int:
    known = profiles(settings)
    if specialty and specialty not in known:
        raise click.BadParameter(f"unknown specialty {specialty}; known: {', '.join(known)}", param_hint="--specialty")
    decision = (TriageDecision(specialty, "chosen with --specialty") if specialty
                else RuleTriage(known)(title=title, body=body, labels=[]))
    with db.session() as session:
        try:
            task = create_task(session, NewTask(repo, issue, title, body, requested_by="cli"), decision,
                               actor="cli:run")
        except ActiveTaskExists as exc:
            raise SettingsError(f"issue {repo}#{issue} already has active task {exc.task_id}") from None
        transition(session, task, TaskState.QUEUED, actor="cli:run", detail="run in process (no broker)")
        return task.id
