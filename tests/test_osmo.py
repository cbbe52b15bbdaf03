"""OSMO workflow rendering and offline validation (no server needed)."""

from __future__ import annotations

import pytest
import yaml

from tune_app.cli import main as cli_main
from tune_app.cluster.osmo import validate_file, validate_text

from .conftest import REPO

BASE = """\
workflow:
  name: sweep
  timeout:
    exec_timeout: {{timeout}}
  resources:
    default: {cpu: 4, gpu: 1, memory: 32Gi, storage: 50Gi}
  groups:
  - name: cluster
    tasks:
    - name: head
      lead: true
      image: my/image:1
      command: [bash]
      args: [/tmp/head.sh]
      environment: {RAY_PORT: "6379", OUT: "{{output}}"}
      credentials:
        wandb: {WANDB_API_KEY: wandb_api_key}
      files:
      - path: /tmp/head.sh
        localpath: head.sh
    {% for i in range(n) %}
    - name: worker-{{i}}
      image: my/image:1
      command: [bash]
      args: [-c, "until ray start --address={{host:head}}:6379 --block; do sleep 5; done"]
      environment: {RAY_PORT: "6379"}
    {% endfor %}
default-values:
  n: 2
  timeout: 2h
"""


@pytest.fixture()
def workdir(tmp_path):
    (tmp_path / "head.sh").write_text("#!/bin/bash\nray start --head --port=6379\npython -m tune_app run s.yaml --address auto\n")
    return tmp_path


def check(text: str, folder, sets=None) -> list[str]:
    return validate_text(text, sets, base_dir=folder)[0]


def test_base_workflow_is_valid(workdir):
    problems, spec = validate_text(BASE, base_dir=workdir)
    assert problems == []
    tasks = spec["groups"][0]["tasks"]
    assert [t["name"] for t in tasks] == ["head", "worker-0", "worker-1"]
    assert "{{host:head}}" in tasks[1]["args"][1] and tasks[0]["environment"]["OUT"] == "{{output}}"   # tokens kept


BROKEN = [
    ("unknown top-level key", lambda t: t + "resources:\n  x: 1\n", "resources: unknown top-level key"),
    ("spaces in a special token", lambda t: t.replace('"{{output}}"', '"{{ output }}"'), "has spaces inside the braces"),
    ("undefined template variable (original's WORKERS_*)", lambda t: t.replace("range(n)", "range(WORKERS_COUNT)"),
     "'WORKERS_COUNT' is undefined"),
    ("task-level groups: count (original)", lambda t: t.replace("      lead: true\n", "      lead: true\n      groups: {count: 2}\n"),
     "workflow.groups[0].tasks[0].groups: unknown field"),
    ("credential secret: form (original)", lambda t: t.replace("{WANDB_API_KEY: wandb_api_key}", "{secret: wandb-key}"),
     "'secret:' is not OSMO credential syntax"),
    ("input path: (original)", lambda t: t.replace("      files:\n", "      inputs:\n      - url: s3://b/data\n        path: /data\n      files:\n", 1),
     "inputs[0].path: unknown field"),
    ("no lead in a group", lambda t: t.replace("      lead: true\n", ""), "has 0 lead task(s) but must have exactly one"),
    ("two leads", lambda t: t.replace("      args: [-c,", "      lead: true\n      args: [-c,"), "has 3 lead task(s)"),
    ("host token naming no task of the group", lambda t: t.replace("{{host:head}}", "{{host:master}}"),
     "'{{host:master}}' names no task of this group"),
    ("names equal after normalisation", lambda t: t.replace("- name: worker-{{i}}", "- name: Head{{i}}").replace("range(n)", "range(1)")
     .replace("- name: head\n", "- name: head0\n").replace("{{host:head}}", "{{host:head0}}"), "collides with"),
    ("memory in GB", lambda t: t.replace("memory: 32Gi", "memory: 32GB"), "workflow.resources.default.memory"),
    ("fractional cpu", lambda t: t.replace("cpu: 4", "cpu: 0.5"), "workflow.resources.default.cpu: 0.5 must be a whole number"),
    ("mixed-unit duration", lambda t: t, "workflow.timeout.exec_timeout: '10h5m' is not a duration", ["timeout=10h5m"]),
    ("localpath file missing", lambda t: t.replace("localpath: head.sh", "localpath: missing.sh"), "'missing.sh' not found"),
    ("input from the same group", lambda t: t.replace("      files:\n", "      inputs:\n      - task: worker-0\n      files:\n", 1),
     "'worker-0' must be a task of an earlier group"),
    ("lead sleeps forever (cookbook pattern)", lambda t: t.replace("args: [/tmp/head.sh]", "args: [-c, 'ray start --head; sleep infinity']"),
     "sleeps forever"),
    ("input token without inputs", lambda t: t.replace('OUT: "{{output}}"', 'OUT: "{{input:0}}"'), "'{{input:0}}' has no matching entry"),
    ("version 3", lambda t: "version: 3\n" + t, "only version 2 is accepted"),
    ("bare boolean arg", lambda t: t.replace("args: [/tmp/head.sh]", "args: [/tmp/head.sh, true]"), "args[1]: True must be a string"),
    ("RESTART exit action", lambda t: t.replace("      lead: true\n", "      lead: true\n      exitActions: {RESTART: '1'}\n"),
     "keys are COMPLETE, FAIL or RESCHEDULE"),
    ("too many tasks", lambda t: t, "21 tasks; OSMO allows 20", ["n=20"]),
    ("output url that is not a bucket", lambda t: t.replace("      files:\n", "      outputs:\n      - url: /output/train\n      files:\n", 1),
     "is not a storage URL"),
    ("workers join another port", lambda t: t.replace('environment: {RAY_PORT: "6379"}\n    {% endfor', 'environment: {RAY_PORT: "6380"}\n    {% endfor'),
     "different RAY_PORT values"),
    ("undefined resource", lambda t: t.replace("args: [/tmp/head.sh]", "args: [/tmp/head.sh]\n      resource: big"),
     "'big' is not defined in workflow.resources"),
]


@pytest.mark.parametrize("case", BROKEN, ids=[c[0] for c in BROKEN])
def test_broken_workflow_is_caught_with_its_path(case, workdir):
    _, mutate, expected, *sets = case
    problems = check(mutate(BASE), workdir, sets[0] if sets else None)
    assert any(expected in p for p in problems), problems


def test_jinja_in_a_localpath_script_is_caught(workdir):
    (workdir / "head.sh").write_text('#!/bin/bash\narr=(a b)\necho "${#arr[@]}"\n')
    problems = check(BASE, workdir)
    assert any("head.sh line 3 contains '{#'" in p for p in problems), problems


def test_validate_cli_exit_codes(workdir, capsys):
    (workdir / "wf.yaml").write_text(BASE)
    assert cli_main(["osmo", "validate", str(workdir / "wf.yaml")]) == 0
    (workdir / "bad.yaml").write_text(BASE.replace("cpu: 4", "cpu: 0.5").replace("memory: 32Gi", "memory: 1GB"))
    assert cli_main(["osmo", "validate", str(workdir / "bad.yaml"), "--set", "n=1"]) == 2
    err = capsys.readouterr().err
    assert "workflow.resources.default.cpu" in err and "workflow.resources.default.memory" in err and "2 problem(s)" in err


@pytest.mark.parametrize("workers", [1, 4, 19])
def test_render_then_validate_round_trip(workers, tmp_path, capsys):
    out = tmp_path / "wf.yaml"
    rc = cli_main(["osmo", "render", str(REPO / "search_spaces" / "lr_grid.yaml"), "--workers", str(workers),
                   "--image", "registry.example/tune_app:1", "--storage-path", "s3://bucket/tune_app", "--gpu", "2",
                   "--storage-credential", "s3-rw", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    problems, spec = validate_file(out)
    assert problems == []
    tasks = spec["groups"][0]["tasks"]
    assert len(tasks) == workers + 1 and tasks[0]["name"] == "head" and tasks[0]["lead"] is True
    assert all(t["environment"]["HEAD_HOST"] == "{{host:head}}" for t in tasks[1:])
    head_env = tasks[0]["environment"]
    assert head_env["SEARCH_SPACE"] == "search_spaces/lr_grid.yaml" and head_env["NUM_WORKERS"] == str(workers)
    assert head_env["OUTPUT_DIR"] == "{{output}}" and spec["resources"]["default"]["gpu"] == 2
    script = tasks[0]["files"][0]["contents"]                       # the entry script, inlined
    assert script == (REPO / "osmo" / "head.sh").read_text()
    # lr_grid uses no tracker: the cluster's Ray token and the bucket's credential are mapped, into every task
    storage = {"AWS_ACCESS_KEY_ID": "access_key_id", "AWS_SECRET_ACCESS_KEY": "access_key", "AWS_DEFAULT_REGION": "region"}
    assert all(t["credentials"] == {"ray-token": {"RAY_AUTH_TOKEN": "token"}, "s3-rw": storage} for t in tasks)
    assert "default-values" not in out.read_text() and spec["name"] == "lr_grid"     # complete; named after the sweep


IMAGE = ["--image", "registry.example/tune_app:1"]
BUCKET = ["--storage-path", "s3://b/p", "--storage-credential", "s3-rw"]


def test_render_refuses_a_workflow_that_could_not_run(capsys):
    rc = cli_main(["osmo", "render", str(REPO / "search_spaces" / "lr_grid.yaml"), "--workers", "20", *IMAGE, *BUCKET])
    assert rc == 2 and "21 tasks" in capsys.readouterr().err
    rc = cli_main(["osmo", "render", str(REPO / "search_spaces" / "lr_grid.yaml"), "--workers", "2", *IMAGE])
    assert rc == 2 and "set storage_path" in capsys.readouterr().err
    rc = cli_main(["osmo", "render", str(REPO / "search_spaces" / "lr_grid.yaml"), "--workers", "2", *IMAGE,
                   "--storage-path", "s3://b/p"])
    assert rc == 2 and "--storage-credential" in capsys.readouterr().err
    rc = cli_main(["osmo", "render", str(REPO / "search_spaces" / "lr_grid.yaml"), "--workers", "0"])
    assert rc == 2 and "--image" in capsys.readouterr().err
    rc = cli_main(["osmo", "render", str(REPO / "search_spaces" / "lr_grid.yaml"), "--workers", "0",
                   "--image", "nvcr.io/your-org/tune_app:latest"])
    assert rc == 2 and "--image" in capsys.readouterr().err


def test_shipped_workflow_validates_and_its_scripts_are_jinja_free():
    problems, spec = validate_file(REPO / "osmo" / "ray-sweep.yaml", ["storage_path=s3://bucket/p", "mlflow_credential=mlflow"])
    assert problems == []
    assert spec["groups"][0]["tasks"][0]["credentials"]["mlflow"]["MLFLOW_TRACKING_PASSWORD"] == "password"


def test_entry_scripts_are_valid_bash():
    import subprocess

    for name in ("head.sh", "worker.sh"):
        proc = subprocess.run(["bash", "-n", str(REPO / "osmo" / name)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_dockerfile_installs_the_readme_way_and_ships_what_the_workflow_runs():
    import re

    docker = (REPO / "Dockerfile").read_text()
    readme = (REPO / "README.md").read_text()
    main_cmd = re.search(r"```bash\n(pip install .*?) && python -m tune_app run", readme).group(1)
    assert main_cmd == "pip install torch==2.13.0 && pip install -e ."
    run = docker[docker.index("\nRUN ") + 1:].split("\n\n", 1)[0].replace("\\\n", "")
    keep_torch, no_torch = re.split(r";\s+else ", run, maxsplit=1)
    # Ray pinned to the release the fast path was tested on, in both branches.
    from tune_app.fastpath import TESTED_RAY

    ray_pin = re.search(r"^ARG RAY_VERSION=(\S+)$", docker, re.M).group(1)
    assert ray_pin.rsplit(".", 1)[0] in TESTED_RAY and 'echo "ray==${RAY_VERSION}" > /tmp/pins.txt' in keep_torch
    # A base with torch (NGC) keeps it, pinned; a base without gets the README's install, nothing else.
    assert 'if python -c "import torch"' in keep_torch and "pip install -c /tmp/pins.txt -e ." in keep_torch
    assert "torch==2.13.0" not in keep_torch
    assert re.sub(r' \$\{TORCH_INDEX:\+[^}]*\}', "", no_torch).split("; fi")[0].strip() == main_cmd.replace(
        "pip install -e .", "pip install -c /tmp/pins.txt -e .")
    assert re.search(r"^ARG BASE=nvcr\.io/nvidia/pytorch:\S+$", docker, re.M) and "FROM ${BASE}" in docker
    assert "WORKDIR /app" in docker
    app_dir = yaml.safe_load((REPO / "osmo" / "ray-sweep.yaml").read_text().split("default-values:", 1)[1])["app_dir"]
    assert app_dir == "/app"
    copied = set(re.findall(r"^COPY (\S+) ", docker, re.M))
    for needed in ("tune_app", "osmo", "search_spaces", "configs", "pyproject.toml"):
        assert needed in copied, needed
    assert 'ENTRYPOINT ["python", "-m", "tune_app"]' in docker
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "runs" in ignored and "osmo" not in ignored


INJECTIONS = [
    ("--image", 'evil:1"\n      privileged: true\n      hostNetwork: true\n      x: "'),
    ("--image", "img:1\nprivileged: true"),
    ("--memory", "64Gi\n  privileged: true"),
    ("--exec-timeout", "8h}}{{ 7*7 }}"),
    ("--set", "tune_app_args={% for x in range(9) %}x{% endfor %}"),
    ("--set", "tune_app_args={# comment"),
    ("--set", "storage_path=s3://b/p\r\nhostNetwork: true"),
    ("--set", "sweep_name=a\x00b"),
    ("--override", "wandb.project=p{{ 7*7 }}"),
    ("--override", "wandb.project=line\nprivileged: true"),
    ("--data-url", "s3://b/rec\nhostNetwork: true"),
    ("--dataset", "robots\nprivileged: true"),
]


@pytest.mark.parametrize("flag,value", INJECTIONS)
def test_render_refuses_values_that_would_change_the_workflow(flag, value, tmp_path, capsys):
    out = tmp_path / "wf.yaml"
    args = [flag, value] if flag != "--set" else ["--set", value]
    rc = cli_main(["osmo", "render", str(REPO / "search_spaces" / "lr_grid.yaml"), "--workers", "1",
                   *IMAGE, *BUCKET, *args, "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()


def test_render_keeps_quotes_and_yaml_syntax_as_plain_values(tmp_path, capsys):
    """Legitimate values holding quotes, colons or '#' are serialised by the YAML library, not pasted."""
    out = tmp_path / "wf.yaml"
    args = '--override "training.lr=1e-4" # note: x'
    rc = cli_main(["osmo", "render", str(REPO / "search_spaces" / "lr_grid.yaml"), "--workers", "1", *IMAGE, *BUCKET,
                   "--set", f"tune_app_args={args}", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    problems, spec = validate_file(out)
    assert problems == []
    head = spec["groups"][0]["tasks"][0]
    assert head["environment"]["TUNE_APP_ARGS"] == args
    assert "privileged" not in head and "hostNetwork" not in head


@pytest.mark.parametrize("key", ["privileged", "hostNetwork"])
def test_validator_flags_privileged_and_host_network(key, workdir):
    text = BASE.replace("      lead: true\n", f"      lead: true\n      {key}: true\n")
    assert any(f".{key}" in p for p in check(text, workdir))


@pytest.mark.parametrize("size,ok", [("50%", True), ("0%", True), ("100%", True), ("150%", False), ("-5%", False),
                                     ("20Gi", True), ("20GB", False), ("lots", False)])
def test_validator_checks_cache_size(size, ok, workdir):
    text = BASE.replace("      lead: true\n", f"      lead: true\n      cacheSize: '{size}'\n")
    assert (not any("cacheSize" in p for p in check(text, workdir))) == ok


def _render(tmp_path, capsys, *extra: str) -> dict:
    out = tmp_path / "wf.yaml"
    rc = cli_main(["osmo", "render", str(REPO / "search_spaces" / "lr_grid.yaml"), "--workers", "2", *IMAGE, *BUCKET,
                   *extra, "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    problems, spec = validate_file(out)
    assert problems == []
    return spec


@pytest.mark.parametrize("source,expected_input", [(["--dataset", "ur10e-bags:v3"], {"dataset": {"name": "ur10e-bags:v3"}}),
                                                   (["--data-url", "s3://robots/ur10e"], {"url": "s3://robots/ur10e"})])
def test_render_gives_every_node_the_data_and_points_the_config_at_it(source, expected_input, tmp_path, capsys):
    import json

    spec = _render(tmp_path, capsys, *source, "--data-kind", "lerobot", "--override", "training.steps=50")
    tasks = spec["groups"][0]["tasks"]
    assert all(t["inputs"] == [expected_input] for t in tasks)              # head and every worker
    argv = json.loads(tasks[0]["environment"]["TUNE_APP_ARGV"])
    assert argv == ["--override", "training.steps=50", "--override", "data.lerobot_root={{input:0}}"]


@pytest.mark.parametrize("overrides,expected", [
    ([], {"ray-token", "s3-rw"}),
    (["--override", "wandb.enabled=true"], {"ray-token", "s3-rw", "wandb"}),
    (["--override", "mlflow.enabled=true"], {"ray-token", "s3-rw", "mlflow"}),
])
def test_render_maps_exactly_the_credentials_the_config_needs(overrides, expected, tmp_path, capsys):
    tasks = _render(tmp_path, capsys, *overrides)["groups"][0]["tasks"]
    assert set(tasks[0]["credentials"]) == expected
    assert all(set(t["credentials"]) == {"ray-token", "s3-rw"} for t in tasks[1:])    # workers: token and bucket only


def test_render_maps_the_storage_endpoint_and_shm_and_reschedules_a_killed_head(tmp_path, capsys):
    tasks = _render(tmp_path, capsys, "--storage-endpoint", "--shm-size", "8Gi")["groups"][0]["tasks"]
    for task in tasks:
        assert task["credentials"]["s3-rw"]["AWS_ENDPOINT_URL"] == "endpoint_url"
        assert task["volumeMounts"] == ["/dev/shm"] and task["environment"]["SHM_SIZE"] == "8Gi"
    assert tasks[0]["exitActions"]["RESCHEDULE"] == "137,143" and tasks[0]["exitActions"]["COMPLETE"] == "0"
    assert "volumeMounts" not in _render(tmp_path, capsys, "--no-shm")["groups"][0]["tasks"][0]


def test_render_names_the_workflow_after_the_sweep(tmp_path, capsys):
    from tune_app.cluster.osmo import workflow_name

    assert _render(tmp_path, capsys, "--set", "sweep_name=my.sweep_2")["name"] == "lr_grid"     # --set is literal
    assert workflow_name("lr_grid") == "lr_grid" and workflow_name("2024.run") == "sweep-2024-run"
    assert workflow_name("a" * 80) == "a" * 64


def test_validate_warns_about_a_bucket_without_credentials_and_a_placeholder_image(capsys):
    rc = cli_main(["osmo", "validate", str(REPO / "osmo" / "ray-sweep.yaml"), "--set", "storage_path=s3://b/p"])
    err = capsys.readouterr().err
    assert rc == 0 and "no storage credential is mapped" in err and "looks like a placeholder" in err
