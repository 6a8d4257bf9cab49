"""GET /metrics: every figure checked against rows in the real PostgreSQL, the real Redis broker
and a real worker process, and exact across a worker restart (it is read from the record)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from common.db import Database
from common.forge.local import LocalForge
from common.models import Task, TaskEvent, TaskRun, WebhookDelivery
from common.settings import Settings
from common.specialties import queue_names
from coordinator.app import create_app
from tests.conftest import settings_env
from tests.factories import make_task
from tests.fakes.anthropic_server import FakeAnthropic
from tests.sample_repo import fixing_script
from tests.support import Process, start_coordinator, start_worker, wait_for

METRICS_TOKEN = "test-metrics-token-0123456789"
T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, keyed by (sample name, labels)."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: number for (sample, labels), number in samples.items() if sample == name}


@pytest.fixture
def scrape(make_settings: Callable[..., Settings], db: Database) -> Iterator[Callable[..., Samples]]:
    """Scrape an in-process coordinator app (its lifespan running) and parse the result."""
    app = create_app(make_settings(), run_reconciler=False)
    with TestClient(app) as client:
        def get() -> Samples:
            response = client.get("/metrics")
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith("text/plain")
            return parse(response.text)
        yield get


def add_run(db: Database, task_id: int, *, outcome: str | None, model: str | None = "claude-sonnet-4-6",
            detail: str = "", seconds: float = 60, tokens: tuple[int, int, int, int] = (0, 0, 0, 0),
            cost: float | None = None, sandbox: str | None = "bubblewrap") -> None:
    with db.session() as session:
        session.add(TaskRun(task_id=task_id, attempt=1, worker="w", model=model, outcome=outcome, detail=detail,
                            input_tokens=tokens[0], output_tokens=tokens[1], cache_read_tokens=tokens[2],
                            cache_write_tokens=tokens[3], cost_usd=cost, sandbox=sandbox, started_at=T0,
                            finished_at=T0 + timedelta(seconds=seconds) if outcome else None))


def end_task(db: Database, task_id: int, state: str, *, after: float) -> None:
    """Move a task into a final state `after` seconds past its creation (as T0)."""
    with db.session() as session:
        task = session.get(Task, task_id)
        task.created_at = T0
        session.add(TaskEvent(task_id=task_id, from_state=task.state, to_state=state, actor="test",
                              at=T0 + timedelta(seconds=after)))
        task.state = state


def test_task_gauges_match_the_database(db: Database, scrape: Callable[[], Samples]) -> None:
    ids = [make_task(db, issue_number=n, specialty=s) for n, s in ((1, "backend"), (2, "backend"), (3, "devops"))]
    end_task(db, ids[2], "failed", after=10)
    samples = scrape()
    with db.session() as session:
        expected = {(state, specialty): count for state, specialty, count in session.execute(
            select(Task.state, Task.specialty, func.count()).group_by(Task.state, Task.specialty))}
    assert expected == {("triaged", "backend"): 2, ("failed", "devops"): 1}
    tasks = series(samples, "forgecrew_tasks")
    for (state, specialty), count in expected.items():
        assert tasks[frozenset({("state", state), ("specialty", specialty)})] == count
    assert sum(tasks.values()) == 3  # every other known pair is reported as 0
    assert value(samples, "forgecrew_tasks", state="running", specialty="frontend") == 0
    assert value(samples, "forgecrew_database_up") == 1


def test_duration_histograms(db: Database, scrape: Callable[[], Samples]) -> None:
    first, second = make_task(db, issue_number=1), make_task(db, issue_number=2)
    end_task(db, first, "pr_open", after=250)
    end_task(db, second, "pr_open", after=4000)
    add_run(db, first, outcome="pr_open", seconds=45)
    add_run(db, first, outcome="failed", seconds=700)
    add_run(db, second, outcome=None)  # still running: no duration yet
    samples = scrape()
    task = {"specialty": "backend", "state": "pr_open"}
    assert value(samples, "forgecrew_task_duration_seconds_count", **task) == 2
    assert value(samples, "forgecrew_task_duration_seconds_sum", **task) == pytest.approx(4250, abs=0.01)
    assert value(samples, "forgecrew_task_duration_seconds_bucket", le="60.0", **task) == 0
    assert value(samples, "forgecrew_task_duration_seconds_bucket", le="300.0", **task) == 1
    assert value(samples, "forgecrew_task_duration_seconds_bucket", le="3600.0", **task) == 1
    assert value(samples, "forgecrew_task_duration_seconds_bucket", le="7200.0", **task) == 2
    assert value(samples, "forgecrew_task_duration_seconds_bucket", le="+Inf", **task) == 2
    ok = {"specialty": "backend", "outcome": "pr_open"}
    assert value(samples, "forgecrew_run_duration_seconds_count", **ok) == 1
    assert value(samples, "forgecrew_run_duration_seconds_bucket", le="30.0", **ok) == 0
    assert value(samples, "forgecrew_run_duration_seconds_bucket", le="60.0", **ok) == 1
    failed = {"specialty": "backend", "outcome": "failed"}
    assert value(samples, "forgecrew_run_duration_seconds_sum", **failed) == pytest.approx(700, abs=0.01)
    assert value(samples, "forgecrew_run_duration_seconds_bucket", le="600.0", **failed) == 0
    assert value(samples, "forgecrew_run_duration_seconds_bucket", le="900.0", **failed) == 1


def test_runs_tokens_cost_and_errors(db: Database, scrape: Callable[[], Samples]) -> None:
    backend, devops = make_task(db, issue_number=1), make_task(db, issue_number=2, specialty="devops")
    add_run(db, backend, outcome="pr_open", tokens=(100, 20, 5, 1), cost=0.25)
    add_run(db, backend, outcome="pr_open", tokens=(300, 40, 0, 0), cost=0.5, sandbox="none")
    add_run(db, backend, outcome="failed", detail="model error: the API answered 529 overloaded 3 times",
            tokens=(7, 0, 0, 0))
    add_run(db, devops, outcome="failed", model=None, detail="bubblewrap cannot run a command on this host: "
            "permission denied. forgecrew runs the agent's and the repository's commands only in a sandbox")
    add_run(db, devops, outcome="failed", model="claude-haiku-4-5",
            detail="setup command failed: exit 1\n\nsandbox: no such file")  # the repo's output, not ours
    samples = scrape()
    assert value(samples, "forgecrew_runs_total", specialty="backend", outcome="pr_open", sandbox="bubblewrap") == 1
    assert value(samples, "forgecrew_runs_total", specialty="backend", outcome="pr_open", sandbox="none") == 1
    assert value(samples, "forgecrew_runs_total", specialty="devops", outcome="failed", sandbox="bubblewrap") == 2
    with db.session() as session:
        for kind in ("input", "output", "cache_read", "cache_write"):
            column = getattr(TaskRun, f"{kind}_tokens")
            total = session.scalar(select(func.sum(column)).join(Task).where(Task.specialty == "backend"))
            assert value(samples, "forgecrew_tokens_total", specialty="backend", model="claude-sonnet-4-6",
                         kind=kind) == total
    assert value(samples, "forgecrew_tokens_total", specialty="backend", model="claude-sonnet-4-6",
                 kind="input") == 407
    assert value(samples, "forgecrew_cost_usd_total", specialty="backend", model="claude-sonnet-4-6") == 0.75
    assert value(samples, "forgecrew_tokens_total", specialty="devops", model="none", kind="input") is None
    assert series(samples, "forgecrew_model_errors_total") == {
        frozenset({("specialty", "backend"), ("model", "claude-sonnet-4-6")}): 1}
    assert series(samples, "forgecrew_sandbox_errors_total") == {frozenset({("specialty", "devops")}): 1}


def test_webhook_deliveries_by_outcome_class(db: Database, scrape: Callable[[], Samples]) -> None:
    outcomes = ["task 1 created (backend)", "task 2 created (frontend)", "ignored: issue is closed",
                "ignored: label 'bug' is not a forgecrew trigger", "untrusted: octocat is NONE; a maintainer...",
                "recorded: task 1 is already active for this issue", "rejected: malformed JSON (x)",
                "something new"]
    with db.session() as session:
        for number, outcome in enumerate(outcomes):
            session.add(WebhookDelivery(delivery_id=f"d-{number}", event="issues", outcome=outcome))
        session.add(WebhookDelivery(delivery_id="d-ping", event="ping", outcome="pong (hook 1)"))
    samples = scrape()
    assert series(samples, "forgecrew_webhook_deliveries_total") == {
        frozenset({("event", "issues"), ("outcome", name)}): count for name, count in
        (("task_created", 2), ("ignored", 2), ("untrusted", 1), ("recorded", 1), ("rejected", 1), ("other", 1))
    } | {frozenset({("event", "ping"), ("outcome", "pong")}): 1}


def test_queue_depth_counts_messages_on_redis(make_settings: Callable[..., Settings], db: Database,
                                              scrape: Callable[[], Samples]) -> None:
    app = create_app(make_settings(), run_reconciler=False)
    dispatcher = app.state.services.dispatcher
    for number in (1, 2, 3):
        assert dispatcher.dispatch(make_task(db, issue_number=number, specialty="backend"))
    assert dispatcher.dispatch(make_task(db, issue_number=4, specialty="testing"))
    samples = scrape()
    assert value(samples, "forgecrew_broker_up") == 1
    depths = {dict(labels)["queue"]: count for labels, count in series(samples, "forgecrew_queue_depth").items()}
    assert depths == {name: {"backend": 3, "testing": 1}.get(name, 0) for name in queue_names(make_settings())}
    app.state.services.db.dispose()


def test_broker_down_is_reported_not_raised(make_settings: Callable[..., Settings], db: Database) -> None:
    app = create_app(make_settings(broker_url="redis://127.0.0.1:1/0"), run_reconciler=False)
    with TestClient(app) as client:
        samples = parse(client.get("/metrics").text)
    assert value(samples, "forgecrew_broker_up") == 0
    assert series(samples, "forgecrew_queue_depth") == {}
    assert value(samples, "forgecrew_database_up") == 1


def test_database_down_is_reported_not_raised(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(database_url="postgresql://postgres@127.0.0.1:1/none"), run_reconciler=False)
    with TestClient(app) as client:
        samples = parse(client.get("/metrics").text)
    assert value(samples, "forgecrew_database_up") == 0
    assert value(samples, "forgecrew_broker_up") == 1
    assert series(samples, "forgecrew_tasks") == {}


def test_every_name_is_prefixed(db: Database, scrape: Callable[[], Samples]) -> None:
    add_run(db, make_task(db), outcome="pr_open", tokens=(1, 1, 1, 1), cost=0.1)
    assert all(name.startswith("forgecrew_") for name, _ in scrape())


def test_metrics_token_when_set(make_settings: Callable[..., Settings], db: Database) -> None:
    app = create_app(make_settings(metrics_token=METRICS_TOKEN, api_token="an-api-token-0123456789"),
                     run_reconciler=False)
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 401
        wrong = client.get("/metrics", headers={"Authorization": "Bearer an-api-token-0123456789"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        ok = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert ok.status_code == 200 and "forgecrew_tasks" in ok.text


# ---- real worker processes ------------------------------------------------------------------------------


def scrape_url(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return parse(response.text)


def finished_runs(db: Database) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(TaskRun).where(TaskRun.outcome.is_not(None))) or 0


def run_one_task(db: Database, url: str, issue: int, model: FakeAnthropic, forge: LocalForge) -> None:
    """Dispatch a task for a fresh issue of acme/calc and wait for its run to be recorded."""
    from common.celery_app import make_celery
    from coordinator.dispatch import Dispatcher

    forge.create_issue("acme/calc", issue, "add() subtracts", "calc.add(2, 3) returns -1")
    model.add(*fixing_script())
    before = finished_runs(db)
    task_id = make_task(db, repo="acme/calc", issue_number=issue, specialty="backend")
    celery = make_celery(db.settings)
    assert Dispatcher(db, celery).dispatch(task_id)
    wait_for(lambda: finished_runs(db) == before + 1, timeout=120, what=f"task {task_id}'s run recorded")


@pytest.mark.integration
def test_worker_figures_stay_exact_across_a_worker_restart(forge_settings: Settings, db: Database,
                                                           model: FakeAnthropic, forge: LocalForge,
                                                           tmp_path: Path, processes: list[Process]) -> None:
    env = settings_env(forge_settings)
    coordinator, url = start_coordinator(env, tmp_path)
    processes.append(coordinator)
    worker = start_worker(env, tmp_path, "backend")
    processes.append(worker)
    wait_for(lambda: value(scrape_url(url), "forgecrew_workers_online") == 1, timeout=30, what="worker online")
    run_one_task(db, url, 1, model, forge)
    first = scrape_url(url)
    assert value(first, "forgecrew_runs_total", specialty="backend", outcome="pr_open", sandbox="bubblewrap") == 1
    worker.stop()  # a warm shutdown says worker-offline
    wait_for(lambda: value(scrape_url(url), "forgecrew_workers_online") == 0, timeout=30, what="worker offline")
    processes.append(start_worker(env, tmp_path, "backend"))
    wait_for(lambda: value(scrape_url(url), "forgecrew_workers_online") == 1, timeout=30, what="new worker online")
    run_one_task(db, url, 2, model, forge)
    second = scrape_url(url)
    assert value(second, "forgecrew_runs_total", specialty="backend", outcome="pr_open", sandbox="bubblewrap") == 2
    with db.session() as session:
        spent = session.execute(select(func.sum(TaskRun.input_tokens), func.sum(TaskRun.output_tokens))).one()
    labels = {"specialty": "backend", "model": "claude-sonnet-4-6"}
    assert value(second, "forgecrew_tokens_total", kind="input", **labels) == spent[0] > 0
    assert value(second, "forgecrew_tokens_total", kind="output", **labels) == spent[1] > 0
    assert value(second, "forgecrew_tokens_total", kind="input", **labels) > \
        value(first, "forgecrew_tokens_total", kind="input", **labels)
    assert value(second, "forgecrew_run_duration_seconds_count", specialty="backend", outcome="pr_open") == 2
    # a second coordinator (or this one restarted) reports the same record
    other, other_url = start_coordinator(env, tmp_path)
    processes.append(other)
    again = scrape_url(other_url)
    for name in ("forgecrew_runs_total", "forgecrew_tokens_total", "forgecrew_run_duration_seconds_count"):
        assert series(again, name) == series(second, name)


def test_the_same_figures_on_sqlite(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """`forgecrew up` keeps its state in SQLite: durations are computed there with julianday()."""
    from common import migrate

    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'state.db'}")
    migrate.upgrade(settings)
    sqlite = Database(settings)
    task_id = make_task(sqlite, issue_number=1)
    end_task(sqlite, task_id, "failed", after=90.5)
    add_run(sqlite, task_id, outcome="failed", seconds=30.25, detail="model error: gave up", tokens=(10, 2, 0, 0))
    with sqlite.session() as session:
        session.add(WebhookDelivery(delivery_id="d-1", event="issues", outcome="task 1 created (backend)"))
    with TestClient(create_app(settings, run_reconciler=False)) as client:
        samples = parse(client.get("/metrics").text)
    sqlite.dispose()
    assert value(samples, "forgecrew_database_up") == 1
    assert value(samples, "forgecrew_tasks", state="failed", specialty="backend") == 1
    ended = {"specialty": "backend", "state": "failed"}
    assert value(samples, "forgecrew_task_duration_seconds_sum", **ended) == pytest.approx(90.5, abs=0.01)
    assert value(samples, "forgecrew_task_duration_seconds_bucket", le="60.0", **ended) == 0
    assert value(samples, "forgecrew_task_duration_seconds_bucket", le="300.0", **ended) == 1
    ran = {"specialty": "backend", "outcome": "failed"}
    assert value(samples, "forgecrew_run_duration_seconds_sum", **ran) == pytest.approx(30.25, abs=0.01)
    assert value(samples, "forgecrew_model_errors_total", specialty="backend", model="claude-sonnet-4-6") == 1
    assert value(samples, "forgecrew_webhook_deliveries_total", event="issues", outcome="task_created") == 1
