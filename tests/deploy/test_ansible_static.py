"""The worker role's autoscale knob, rendered from its templates without a host: each unit reads its range."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from common.settings import Settings
from tests.deploy.ansible_support import ANSIBLE_DIR

ROLE = ANSIBLE_DIR / "roles" / "forgecrew_worker"


def render(name: str, **overrides: Any) -> str:
    """A role template with its defaults (plus overrides), through Jinja as Ansible renders it."""
    values = {**yaml.safe_load((ROLE / "defaults" / "main.yml").read_text()), "ansible_managed": "managed",
              "group_names": ["workers_backend"], **overrides}
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True)
    env.filters["dirname"] = os.path.dirname
    return env.get_template(name).render(**values)


def environment_of(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_the_unit_reads_its_specialty_s_file_beside_the_settings() -> None:
    unit = render("forgecrew-worker@.service.j2")
    assert "EnvironmentFile=-/etc/forgecrew/worker-%i.env" in unit.splitlines()
    assert "--autoscale" not in unit and "--concurrency" not in unit  # nothing forced by default


@pytest.mark.parametrize(("specialty", "wanted"), [("backend", "8,1"), ("testing", "3,1")])
def test_each_specialty_gets_its_own_range_else_the_host_s(specialty: str, wanted: str) -> None:
    text = render("worker.env.j2", item=specialty, forgecrew_worker_autoscale="3,1",
                  forgecrew_worker_autoscale_by_specialty={"backend": "8,1"})
    assert environment_of(text) == {"FORGECREW_WORKER_AUTOSCALE": wanted}
    assert Settings(**{"worker_autoscale": wanted}).worker_autoscale == wanted  # a value the worker accepts


def test_no_range_leaves_the_settings_file_in_charge() -> None:
    # an empty FORGECREW_WORKER_AUTOSCALE would override forgecrew.toml's worker_autoscale: no line at all
    assert environment_of(render("worker.env.j2", item="backend")) == {}


def test_the_role_checks_the_ranges_and_documents_the_variables() -> None:
    tasks = yaml.safe_load((ROLE / "tasks" / "main.yml").read_text())
    check = next(task for task in tasks if task["name"] == "Check the autoscale ranges")
    assert "MAX,MIN" in check["ansible.builtin.assert"]["fail_msg"]
    readme = (ROLE / "README.md").read_text()
    for name in ("forgecrew_worker_autoscale", "forgecrew_worker_autoscale_by_specialty"):
        assert f"{name}:" in (ROLE / "defaults" / "main.yml").read_text() and f"{name}:" in readme
    assert Path(ROLE / "templates" / "worker.env.j2").exists()
