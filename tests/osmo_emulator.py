"""Run a rendered OSMO workflow on this machine the way OSMO would run it, one local process per task.

What OSMO does with a submitted file, in the order it does it (../shared/docs/osmo-spec.md §1-§4):
the ``workflow:`` section is rendered with Jinja (special tokens protected), parsed, and for each
task the special tokens are substituted: ``{{host:T}}`` -> the task's address (here 127.0.0.1),
``{{input:N}}`` -> the folder holding input N, ``{{output}}`` -> the task's output folder,
``{{workflow_id}}``. The task's ``files`` are written, its ``credentials`` fill environment
variables from credential payloads, and ``command + args`` runs with the task's ``environment``.

Machine-specific settings that OSMO's pods do not need (several "nodes" on one machine need their
own Ray temp dir, ports and a PID namespace) come from ``host_env``, outside the workflow.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tune_app.cluster.osmo import Problems, render, split_sections


@dataclass
class Task:
    name: str
    argv: list[str]
    env: dict[str, str]                      # the task's own environment: workflow environment + credentials
    credentials: dict[str, dict[str, str]]
    output: Path
    lead: bool = False
    proc: subprocess.Popen | None = field(default=None, repr=False)


def resolve(workflow_file: Path, root: Path, inputs: list[Path], payloads: dict[str, dict[str, str]],
            workflow_id: str = "emulated-1") -> list[Task]:
    """The tasks of the workflow's first group, resolved as OSMO resolves them, files written under ``root``."""
    problems = Problems()
    sections = split_sections(workflow_file.read_text(), problems)
    values = (yaml.safe_load(sections.get("default-values", "")) or {}).get("default-values") or {}
    rendered = render(sections["workflow"], values, problems)
    assert rendered is not None and not problems, problems.items
    spec = yaml.safe_load(rendered)["workflow"]
    tasks = []
    for raw in spec["groups"][0]["tasks"]:
        output = root / "output" / raw["name"]
        output.mkdir(parents=True, exist_ok=True)
        text = json.dumps(raw)
        text = text.replace("{{output}}", str(output)).replace("{{workflow_id}}", workflow_id)
        for task in spec["groups"][0]["tasks"]:
            text = text.replace("{{host:" + task["name"] + "}}", "127.0.0.1")
        for i, folder in enumerate(inputs):
            if i < len(raw.get("inputs") or []):
                text = text.replace("{{input:" + str(i) + "}}", str(folder))
        assert "{{" not in text, f"an unresolved token in task {raw['name']}"
        task = json.loads(text)
        files_root = root / "files" / task["name"]
        mapping = {}
        for f in task.get("files") or []:
            target = files_root / f["path"].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f["contents"])
            mapping[f["path"]] = str(target)
        env = {k: str(v) for k, v in (task.get("environment") or {}).items()}
        creds = task.get("credentials") or {}
        for cred, body in creds.items():
            for var, key in body.items():
                env[var] = payloads[cred][key]          # OSMO refuses a submit whose credential or key is missing
        argv = [mapping.get(a, a) for a in task["command"] + [str(a) for a in task.get("args") or []]]
        tasks.append(Task(task["name"], argv, env, creds, output, bool(task.get("lead"))))
    return tasks


def start(task: Task, host_env: dict[str, str], wrap: list[str] | None = None, log: Path | None = None) -> subprocess.Popen:
    """Run one task as a local process (its own session, so it can be killed as a whole)."""
    env = {**host_env, **task.env}
    out = open(log, "a") if log else subprocess.DEVNULL          # noqa: SIM115 - closed with the process
    task.proc = subprocess.Popen([*(wrap or []), *task.argv], env=env, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True, cwd=os.getcwd())
    return task.proc
