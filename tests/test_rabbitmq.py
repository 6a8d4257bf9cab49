"""RabbitMQ as the broker: `up` on the operator's PostgreSQL and RabbitMQ, and queue depths read from it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from common.celery_app import make_celery
from common.db import Database
from common.forge.local import LocalForge
from common.models import Task
from coordinator.cluster import status_report
from coordinator.dispatch import Dispatcher
from coordinator.metrics.broker import queue_depths
from coordinator.operations import Operations
from tests.conftest import settings_env
from tests.fakes.anthropic_server import DEFAULT_KEY, FakeAnthropic
from tests.sample_repo import ISSUE_BODY, ISSUE_TITLE, fixing_script, write_sample
from tests.support import Process, free_port, headers, labeled_issue, wait_for

pytestmark = pytest.mark.integration
REPO = "Codertocat/Hello-World"


def test_queued_messages_are_counted_on_rabbitmq(make_settings, db: Database,  # type: ignore[no-untyped-def]
                                                amqp_url: str) -> None:
    settings = make_settings(broker_url=amqp_url)  # the `db` fixture empties the tables afterwards
    celery = make_celery(settings)
    operations = Operations(db, Dispatcher(db, celery), celery)
    for number in range(3):
        operations.submit(repo="acme/widgets", issue=None, title=f"chore {number}", specialty="backend",
                          requested_by="test")
    operations.submit(repo="acme/widgets", issue=None, title="ui", specialty="frontend", requested_by="test")
    depths = queue_depths(celery, ["backend", "frontend", "devops"], timeout=5)
    assert depths["backend"] == 3 and depths["frontend"] == 1
    assert "devops" not in depths  # never declared on this virtual host: unknown, not zero
    report = status_report(settings, db, celery)
    rows = {row["name"]: row for row in report["specialties"]}
    assert report["broker"]["ok"] and rows["backend"]["queue_depth"] == 3 and rows["devops"]["queue_depth"] is None


def test_up_on_postgresql_and_rabbitmq_turns_a_webhook_into_a_pr(make_settings, db: Database, amqp_url: str,  # type: ignore[no-untyped-def]
                                                                  tmp_path: Path) -> None:
    with FakeAnthropic(fixing_script()) as model:
        settings = make_settings(broker_url=amqp_url, forge="local", anthropic_api_key=DEFAULT_KEY,
                                 anthropic_base_url=model.base_url)
        forge = LocalForge(settings)
        forge.create_repo(REPO, write_sample(tmp_path / "sample"))
        forge.create_issue(REPO, 1, ISSUE_TITLE, ISSUE_BODY)
        env = settings_env(settings)
        port = free_port()
        up = Process(["up", "--single-worker", "--no-flower", "--port", str(port), "--grace", "5"], env,
                     tmp_path / "up.log")
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: up.alive() and httpx.get(f"{url}/readyz", timeout=1).status_code == 200, timeout=90,
                     what="the coordinator on RabbitMQ")
            wait_for(lambda: " ready." in up.log(), timeout=90, what="the worker on RabbitMQ")
            assert "embedded" not in up.log() and "amqp://guest:**@127.0.0.1:5672" in up.log()
            body = json.dumps(labeled_issue("forgecrew:backend", title=ISSUE_TITLE, body=ISSUE_BODY)).encode()
            response = httpx.post(f"{url}/webhooks/github", content=body, headers=headers("issues", body), timeout=30)
            assert response.status_code == 202, response.text
            task_id = response.json()["task_id"]

            def finished() -> Task | None:
                with db.session() as session:
                    task = session.get(Task, task_id)
                    return task if task.state in ("pr_open", "failed") else None

            task = wait_for(finished, timeout=120, interval=0.5, what="the task to finish")
            assert task.state == "pr_open", (task.failure_reason, up.log()[-3000:])
            assert len(forge.pull_requests(REPO)) == 1
            status = subprocess.run([sys.executable, "-m", "coordinator.cli", "status", "--json"], env=env,
                                    capture_output=True, text=True, timeout=60)
            report = json.loads(status.stdout)
            assert status.returncode == 0 and report["workers"] == 1, status.stderr
            assert {row["name"]: row["queue_depth"] for row in report["specialties"]}["backend"] == 0
        finally:
            assert up.stop(timeout=60) == 0, up.log()[-3000:]
