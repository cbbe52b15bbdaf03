"""OSMO workflow files: offline validation as the OSMO server would check them, and rendering.

``validate_file`` mirrors the server's pipeline (see ../shared/docs/osmo-spec.md §1.2, §7): split the
file on column-0 keys (only ``workflow``, ``default-values``, ``version``), take ``default-values``
plus ``--set`` values (int, then float, else string), protect the special tokens (``{{output}}``,
``{{workflow_id}}``, ``{{uuid}}``, ``{{input:..}}``, ``{{host:..}}``; no spaces inside), render with
Jinja's sandbox and ``StrictUndefined``, parse the YAML and check it against the spec's models
(unknown fields are errors at every level) plus the checks the server does not do but that fail
silently at run time: a ``{{host:X}}`` that names no task of the same group, an ``{{input:N}}``
without such an input, a ``localpath`` file that is missing or holds Jinja syntax. Every problem is
reported with its path in the file (``workflow.groups[0].tasks[1].credentials.wandb``).

``render_workflow`` turns ``osmo/ray-sweep.yaml`` into a complete workflow for one sweep: its
default values set from the arguments and the entry scripts inlined (``contents``), so the file can
be submitted from anywhere.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tune_app.checks import is_uri
from tune_app.cluster.node import parse_size
from tune_app.errors import UserError
from tune_app.sweep.space import load_sweep
from tune_app.yamlio import read_text

TOP_KEYS = {"workflow", "default-values", "version"}
SPECIAL = re.compile(r"\{\{(uuid|workflow_id|output|input:[^}]+|host:[^}]+)\}\}")
SPACED_SPECIAL = re.compile(r"\{\{\s+(uuid|workflow_id|output|input:[^}]*|host:[^}]*)\s*\}\}|\{\{\s*(uuid|workflow_id|output|input:[^}]*|host:[^}]*)\s+\}\}")
NAME = re.compile(r"^[a-zA-Z]([a-zA-Z0-9_-]*[a-zA-Z0-9])?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
QUANTITY = re.compile(r"^(\d+(\.\d+)?)([A-Za-z]*)$")
UNITS = {"T", "Ti", "TiB", "G", "Gi", "GiB", "M", "Mi", "MiB", "K", "Ki", "KiB", "B", "m", ""}
DURATION = re.compile(r"^(\d+)(d|h|m|s|ms|us)$")
ISO_DURATION = re.compile(r"^P(?!$)(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?$")
EXIT_CODES = re.compile(r"^(\d+(-\d+)?)+(,\d+(-\d+)?)*$")
URL = re.compile(r"^(s3|gs|azure|tos|swift)://[^/\s]+(/\S*)?$")
SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
MAX_NAME, MAX_TASKS, MAX_TIMEOUT_S = 64, 20, 60 * 86400

WORKFLOW_KEYS = {"name", "tasks", "groups", "resources", "timeout", "pool", "labels"}
GROUP_KEYS = {"name", "tasks", "barrier", "ignoreNonleadStatus"}
TASK_KEYS = {"name", "image", "command", "args", "lead", "environment", "credentials", "inputs", "outputs", "files",
             "resource", "volumeMounts", "exitActions", "checkpoint", "privileged", "hostNetwork", "downloadType",
             "cacheSize", "kpis"}
RESOURCE_KEYS = {"cpu", "gpu", "memory", "storage", "platform", "nodesExcluded", "topology"}
TIMEOUT_KEYS = {"exec_timeout", "queue_timeout"}
FILE_KEYS = {"path", "contents", "localpath", "base64"}
INPUT_KEYS = {"task", "url", "regex"}
DATASET_KEYS = {"name", "path", "regex", "localpath", "metadata", "labels"}
OUTPUT_KEYS = {"url", "regex"}
CHECKPOINT_KEYS = {"path", "url", "frequency", "regex"}


@dataclass
class Problems:
    items: list[str] = field(default_factory=list)

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}")

    def __bool__(self) -> bool:
        return bool(self.items)


# ------------------------------------------------------------------ sections, values, rendering


def split_sections(text: str, problems: Problems) -> dict[str, str]:
    """The column-0 sections of a workflow file (OSMO's ``parse_workflow_spec``)."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines(keepends=True):
        m = re.match(r"^([a-zA-Z][a-zA-Z0-9_-]*):", line)
        if m:
            current = m.group(1)
            if current not in TOP_KEYS:
                problems.add(current, f"unknown top-level key (allowed: {', '.join(sorted(TOP_KEYS))})")
            elif current in sections:
                problems.add(current, "duplicate top-level key")
            sections.setdefault(current, [])
        if current is not None:
            sections[current].append(line)
    if "workflow" not in sections:
        problems.add("workflow", "workflow spec not found (the file needs a top-level 'workflow:' section)")
    return {k: "".join(v) for k, v in sections.items()}


def cast_set(value: str) -> Any:
    """``--set`` casting: int, then float, else the string."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def parse_sets(items: list[str], problems: Problems, flag: str = "--set", cast=cast_set) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            problems.add(flag, f"'{item}' is incorrectly formatted; use KEY=VALUE")
            continue
        key, value = item.split("=", 1)
        out[key] = cast(value)
    return out


def render(text: str, values: dict[str, Any], problems: Problems, where: str = "workflow") -> str | None:
    """Render Jinja with the special tokens protected; None (and a problem) when rendering fails."""
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    for m in SPACED_SPECIAL.finditer(text):
        problems.add(where, f"special token '{m.group(0)}' has spaces inside the braces; OSMO only protects the exact form "
                            f"'{{{{{(m.group(1) or m.group(2)).strip()}}}}}'")
    placeholders: dict[str, str] = {}

    def protect(m: re.Match) -> str:
        name = f"__osmo_token_{len(placeholders)}"
        placeholders[name] = m.group(0)
        return "{{" + name + "}}"

    protected = SPECIAL.sub(protect, text)
    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined)
    try:
        return env.from_string(protected).render(**values, **placeholders)
    except jinja2.TemplateSyntaxError as err:
        problems.add(where, f"Jinja template error (line {err.lineno}): {err.message}")
    except Exception as err:  # noqa: BLE001 - an undefined value can surface as a TypeError (range(undefined))
        from jinja2 import meta

        missing = sorted(meta.find_undeclared_variables(env.parse(protected)) - set(values) - set(placeholders))
        if missing:
            for name in missing:
                problems.add(where, f"Jinja template error: '{name}' is undefined; give it in default-values or with --set {name}=...")
        else:
            problems.add(where, f"Jinja template error: {err}")
    return None


# ------------------------------------------------------------------ checks


def _unknown(obj: dict, allowed: set[str], path: str, problems: Problems) -> None:
    for key in obj:
        if key not in allowed:
            problems.add(f"{path}.{key}", f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value)
    if m := DURATION.match(text):
        return int(m.group(1)) * SECONDS[m.group(2)]
    if m := ISO_DURATION.match(text):
        d = re.findall(r"(\d+(?:\.\d+)?)([DHMS])", text.replace("T", ""))
        mult = {"D": 86400, "H": 3600, "M": 60, "S": 1}
        return sum(float(n) * mult[u] for n, u in d)
    return None


def _check_duration(value: Any, path: str, problems: Problems) -> None:
    secs = _seconds(value)
    if secs is None:
        problems.add(path, f"'{value}' is not a duration: use <int><d|h|m|s|ms|us> (one unit, e.g. 8h), ISO-8601 (PT1H30M) or seconds")
    elif secs > MAX_TIMEOUT_S:
        problems.add(path, f"'{value}' is longer than the 60d maximum")


def _check_regex(obj: dict, path: str, problems: Problems) -> None:
    if "regex" in obj:
        try:
            re.compile(str(obj["regex"]))
        except re.error as err:
            problems.add(f"{path}.regex", f"not a valid regex ({err})")


def _check_url(value: Any, path: str, problems: Problems) -> None:
    if not isinstance(value, str) or not URL.match(value):
        problems.add(path, f"'{value}' is not a storage URL (s3://, gs://, azure://, tos://, swift://)")


def _check_resources(resources: Any, problems: Problems) -> set[str]:
    if resources is None:
        return {"default"}
    if not isinstance(resources, dict):
        problems.add("workflow.resources", "must map resource names to {cpu, gpu, memory, storage}")
        return set()
    for name, spec in resources.items():
        path = f"workflow.resources.{name}"
        if not isinstance(spec, dict):
            problems.add(path, "must be a mapping of cpu, gpu, memory, storage, ...")
            continue
        _unknown(spec, RESOURCE_KEYS, path, problems)
        for key in ("cpu", "gpu"):
            if key in spec:
                v = spec[key]
                whole = isinstance(v, int) and not isinstance(v, bool) or (isinstance(v, float) and v.is_integer()) or \
                    (isinstance(v, str) and v.isdigit())
                if not whole or float(v) < 0:
                    problems.add(f"{path}.{key}", f"{v!r} must be a whole number >= 0")
        for key in ("memory", "storage"):
            if key in spec:
                m = QUANTITY.match(str(spec[key]))
                if not m or m.group(3) not in UNITS:
                    problems.add(f"{path}.{key}", f"{spec[key]!r} is not a quantity: a number and one of the units "
                                                  "Ti, Gi, Mi, Ki (binary; GB/MB are not accepted), e.g. 64Gi")
        for i, topo in enumerate(spec.get("topology") or []):
            if isinstance(topo, dict) and topo.get("requirementType") not in (None, "required", "preferred"):
                problems.add(f"{path}.topology[{i}].requirementType", "must be 'required' or 'preferred'")
    return set(resources)


def _tokens(obj: Any) -> list[str]:
    text = yaml.safe_dump(obj) if not isinstance(obj, str) else obj
    return [m.group(1) for m in SPECIAL.finditer(text)]


def _check_task(task: dict, path: str, group_tasks: set[str], resource_names: set[str], base_dir: Path | None,
                problems: Problems) -> None:
    _unknown(task, TASK_KEYS, path, problems)
    if not isinstance(task.get("image"), str) or not task.get("image"):
        problems.add(f"{path}.image", "required: a container image")
    cmd = task.get("command")
    if not isinstance(cmd, list) or not cmd or not all(isinstance(c, (str, int, float)) and not isinstance(c, bool) for c in cmd):
        problems.add(f"{path}.command", "required: a non-empty list of strings, e.g. [bash]")
    for i, a in enumerate(task.get("args") or []):
        if isinstance(a, bool) or not isinstance(a, (str, int, float)):
            problems.add(f"{path}.args[{i}]", f"{a!r} must be a string (quote booleans: 'true')")
    if "lead" in task and not isinstance(task["lead"], bool):
        problems.add(f"{path}.lead", "must be true or false")
    env = task.get("environment") or {}
    if not isinstance(env, dict):
        problems.add(f"{path}.environment", "must map variable names to values")
        env = {}
    for key, value in env.items():
        if value is None or isinstance(value, (list, dict)):
            problems.add(f"{path}.environment.{key}", f"{value!r}: values must be strings or numbers")
    _check_credentials(task.get("credentials") or {}, f"{path}.credentials", problems)
    inputs = task.get("inputs") or []
    _check_io(inputs, task.get("outputs") or [], path, problems)
    _check_files(task.get("files") or [], path, base_dir, problems)
    exit_actions = task.get("exitActions") or {}
    for key, value in (exit_actions.items() if isinstance(exit_actions, dict) else []):
        if str(key).upper() not in ("COMPLETE", "FAIL", "RESCHEDULE"):
            problems.add(f"{path}.exitActions.{key}", "keys are COMPLETE, FAIL or RESCHEDULE")
        if not EXIT_CODES.match(str(value)):
            problems.add(f"{path}.exitActions.{key}", f"'{value}' must list exit codes, e.g. 0,1-10,16")
    for i, ck in enumerate(task.get("checkpoint") or []):
        cpath = f"{path}.checkpoint[{i}]"
        if isinstance(ck, dict):
            _unknown(ck, CHECKPOINT_KEYS, cpath, problems)
            _check_url(ck.get("url"), f"{cpath}.url", problems)
            if "frequency" in ck:
                _check_duration(ck["frequency"], f"{cpath}.frequency", problems)
            _check_regex(ck, cpath, problems)
    for i, mount in enumerate(task.get("volumeMounts") or []):
        parts = str(mount).split(":")
        if len(parts) > 2 or not parts[0] or (len(parts) == 2 and not parts[1]):
            problems.add(f"{path}.volumeMounts[{i}]", f"'{mount}' must be '/src' or '/src:/dst'")
    for key in ("privileged", "hostNetwork"):
        if task.get(key) not in (None, False):
            problems.add(f"{path}.{key}", f"{task.get(key)!r}: a tune_app workflow never needs {key} (it hands the container "
                                          "the node itself); remove it")
    if "cacheSize" in task:
        _check_cache_size(task["cacheSize"], f"{path}.cacheSize", problems)
    if task.get("downloadType") not in (None, "download"):
        problems.add(f"{path}.downloadType", "only 'download' is valid")
    if task.get("resource", "default") not in resource_names:
        problems.add(f"{path}.resource", f"'{task.get('resource', 'default')}' is not defined in workflow.resources "
                                         f"({', '.join(sorted(resource_names)) or 'none'})")
    # tokens that OSMO would leave in the command as literal text
    for token in _tokens(task):
        if token.startswith("host:") and token[5:] not in group_tasks:
            problems.add(path, f"'{{{{{token}}}}}' names no task of this group ({', '.join(sorted(group_tasks))}); "
                               "it would stay literal text at run time")
        if token.startswith("input:"):
            ref = token[6:]
            names = [str(i.get("task", "")).split(":")[-1] for i in inputs if isinstance(i, dict)]
            if ref.isdigit() and int(ref) >= len(inputs) or not ref.isdigit() and ref not in names:
                problems.add(path, f"'{{{{{token}}}}}' has no matching entry in this task's inputs")


def _check_cache_size(value: Any, path: str, problems: Problems) -> None:
    text = str(value).strip()
    if text.endswith("%"):
        try:
            ok = 0 <= float(text[:-1]) <= 100
        except ValueError:
            ok = False
        if not ok:
            problems.add(path, f"{value!r}: a percentage must be between 0% and 100%")
        return
    m = QUANTITY.match(text)
    if isinstance(value, bool) or not m or m.group(3) not in UNITS:
        problems.add(path, f"{value!r}: give a percentage (50%) or a quantity with a binary unit (20Gi)")


def _check_credentials(creds: Any, cpath_root: str, problems: Problems) -> None:
    if not isinstance(creds, dict):
        problems.add(cpath_root, "must be {credential: {ENV_VAR: payload_key}} or {credential: /mount/path}")
        creds = {}
    for name, body in creds.items():
        cpath = f"{cpath_root}.{name}"
        if not NAME.match(str(name)):
            problems.add(cpath, "credential names are letters, digits, '-' and '_', starting with a letter")
        if isinstance(body, str):
            if not body.startswith("/"):
                problems.add(cpath, f"'{body}': the string form mounts the credential at an absolute path")
        elif isinstance(body, dict):
            if "secret" in body or "secretKeyRef" in body:
                problems.add(cpath, "'secret:' is not OSMO credential syntax; map environment variables to payload keys, "
                                    "e.g. {wandb: {WANDB_API_KEY: wandb_api_key}} (after `osmo credential set wandb --type GENERIC "
                                    "--payload wandb_api_key=...`)")
                continue
            for env_name, key in body.items():
                if not ENV_NAME.match(str(env_name)):
                    problems.add(f"{cpath}.{env_name}", "not a valid environment variable name")
                if not isinstance(key, str) or not key:
                    problems.add(f"{cpath}.{env_name}", "must name a key of the credential's payload")
        else:
            problems.add(cpath, "must be {ENV_VAR: payload_key} or a mount path")


def _mappings(items: list, path: str, shape: str, problems: Problems):
    """``(item, its path)`` for each mapping of a list; anything else is one problem saying ``shape``."""
    for i, item in enumerate(items):
        where = f"{path}[{i}]"
        if isinstance(item, dict):
            yield item, where
        else:
            problems.add(where, f"must be {shape}")


def _check_io(inputs: list, outputs: list, path: str, problems: Problems) -> None:
    for item, ipath in _mappings(inputs, f"{path}.inputs", "{task: NAME} or {url: URL}", problems):
        if "dataset" in item:
            # OSMO <= 6.3 (removed on main, where {url: ...} inputs and `osmo data` replace them).
            body = item["dataset"]
            if set(item) - {"dataset"} or not isinstance(body, dict) or not isinstance(body.get("name"), str) \
                    or not body["name"] or set(body) - DATASET_KEYS:
                problems.add(f"{ipath}.dataset", f"must be {{name: NAME[:TAG]}} (optional: {', '.join(sorted(DATASET_KEYS - {'name'}))})")
            continue
        _unknown(item, INPUT_KEYS, ipath, problems)
        if ("task" in item) == ("url" in item):
            problems.add(ipath, "needs exactly one of 'task' or 'url'")
        if "url" in item:
            _check_url(item["url"], f"{ipath}.url", problems)
        _check_regex(item, ipath, problems)
    for item, opath in _mappings(outputs, f"{path}.outputs", "{url: URL}", problems):
        _unknown(item, OUTPUT_KEYS, opath, problems)
        if "url" not in item:
            problems.add(opath, "needs 'url'")
        else:
            _check_url(item["url"], f"{opath}.url", problems)
        _check_regex(item, opath, problems)


def _check_files(files: list, path: str, base_dir: Path | None, problems: Problems) -> None:
    seen_paths = set()
    for f, fpath in _mappings(files, f"{path}.files", "{path, contents} or {path, localpath}", problems):
        _unknown(f, FILE_KEYS, fpath, problems)
        p = str(f.get("path") or "")
        if not p:
            problems.add(f"{fpath}.path", "required")
        elif p.strip("/").split("/")[0] == "osmo":
            problems.add(f"{fpath}.path", f"'{p}': paths under /osmo are reserved")
        elif p in seen_paths:
            problems.add(f"{fpath}.path", f"'{p}' appears twice in this task")
        seen_paths.add(p)
        if "contents" in f and "localpath" in f:
            problems.add(fpath, "give 'contents' or 'localpath', not both")
        elif "contents" not in f and "localpath" not in f:
            problems.add(fpath, "needs 'contents' or 'localpath'")
        if "localpath" in f:
            _check_localpath(str(f["localpath"]), base_dir, f"{fpath}.localpath", problems)


def _check_localpath(localpath: str, base_dir: Path | None, path: str, problems: Problems) -> None:
    if base_dir is None:
        problems.add(path, "localpath cannot be resolved (validating text without a file location)")
        return
    target = Path(localpath) if Path(localpath).is_absolute() else base_dir / localpath
    if not target.is_file():
        problems.add(path, f"'{localpath}' not found (looked at {target})")
        return
    text = target.read_text(encoding="utf-8", errors="replace")
    for seq in ("{{", "{%", "{#"):
        if seq in text:
            line = text[: text.index(seq)].count("\n") + 1
            problems.add(path, f"{target} line {line} contains '{seq}': the server renders localpath files with Jinja, "
                               "so the submit would fail; rewrite it (e.g. ${#arr[@]} -> a loop) or escape it")
            break


def check_spec(spec: Any, base_dir: Path | None, problems: Problems) -> None:
    """Check a rendered, parsed ``workflow:`` mapping."""
    if not isinstance(spec, dict):
        problems.add("workflow", "must be a mapping")
        return
    _unknown(spec, WORKFLOW_KEYS, "workflow", problems)
    name = spec.get("name")
    if not isinstance(name, str) or not NAME.match(name) or len(name) > MAX_NAME:
        problems.add("workflow.name", f"{name!r}: required; letters, digits, '-' and '_', starting with a letter, at most {MAX_NAME}")
    resource_names = _check_resources(spec.get("resources"), problems)
    timeout = spec.get("timeout") or {}
    if isinstance(timeout, dict):
        _unknown(timeout, TIMEOUT_KEYS, "workflow.timeout", problems)
        for key in TIMEOUT_KEYS & set(timeout):
            _check_duration(timeout[key], f"workflow.timeout.{key}", problems)
    has_tasks, has_groups = bool(spec.get("tasks")), bool(spec.get("groups"))
    if has_tasks == has_groups:
        problems.add("workflow", "needs exactly one of 'tasks' or 'groups' (non-empty)")
        return
    if has_tasks:
        groups = [{"name": f"{t.get('name')}-group", "tasks": [t], "_flat": True} for t in spec["tasks"] if isinstance(t, dict)]
    else:
        groups = spec["groups"]
    names: dict[str, str] = {}
    earlier: set[str] = set()
    total = 0
    for g, group in enumerate(groups):
        gpath = f"workflow.tasks[{g}]" if group.get("_flat") else f"workflow.groups[{g}]"
        if not isinstance(group, dict):
            problems.add(gpath, "must be a mapping with name and tasks")
            continue
        if not group.get("_flat"):
            _unknown(group, GROUP_KEYS, gpath, problems)
            _check_name(group.get("name"), f"{gpath}.name", names, problems)
        tasks = group.get("tasks") or []
        if not tasks:
            problems.add(f"{gpath}.tasks", "a group needs at least one task")
            continue
        leads = [t for t in tasks if isinstance(t, dict) and t.get("lead") is True]
        if len(tasks) > 1 and len(leads) != 1:
            problems.add(gpath, f"group '{group.get('name')}' has {len(leads)} lead task(s) but must have exactly one (lead: true)")
        task_names = {str(t.get("name")) for t in tasks if isinstance(t, dict)}
        for t, task in enumerate(tasks):
            tpath = gpath if group.get("_flat") else f"{gpath}.tasks[{t}]"
            if not isinstance(task, dict):
                problems.add(tpath, "must be a mapping")
                continue
            total += 1
            _check_name(task.get("name"), f"{tpath}.name", names, problems)
            if _norm(str(task.get("name"))) == "osmo-ctrl":
                problems.add(f"{tpath}.name", "'osmo-ctrl' is reserved")
            _check_task(task, tpath, task_names, resource_names, base_dir, problems)
            for i, item in enumerate(task.get("inputs") or []):
                ref = item.get("task") if isinstance(item, dict) else None
                if isinstance(ref, str) and ":" not in ref and ref not in earlier:
                    where = "this group" if ref in task_names else "an earlier group"
                    problems.add(f"{tpath}.inputs[{i}].task", f"'{ref}' must be a task of an earlier group (it is in {where})"
                                 if ref in task_names else f"'{ref}' is not a task of an earlier group")
        earlier |= task_names
    if total > MAX_TASKS:
        problems.add("workflow", f"{total} tasks; OSMO allows {MAX_TASKS} per workflow by default (head + {MAX_TASKS - 1} workers)")
    _ray_lint(groups, problems)


def _check_name(name: Any, path: str, names: dict[str, str], problems: Problems) -> None:
    if not isinstance(name, str) or not NAME.match(name) or len(name) > MAX_NAME:
        problems.add(path, f"{name!r}: required; letters, digits, '-' and '_', starting with a letter, at most {MAX_NAME}")
        return
    key = _norm(name)
    if key in names:
        problems.add(path, f"'{name}' collides with '{names[key]}' (names are compared ignoring case and '-'/'_')")
    names[key] = name


def _ray_lint(groups: list, problems: Problems) -> None:
    """Project policy for Ray clusters: workers join the lead; a batch sweep's lead must not sleep forever."""
    for g, group in enumerate(groups):
        tasks = [t for t in group.get("tasks") or [] if isinstance(t, dict)]
        lead = next((t for t in tasks if t.get("lead") is True), tasks[0] if len(tasks) == 1 else None)
        if lead is None or len(tasks) < 2:
            continue
        for t, task in enumerate(tasks):
            for token in _tokens(task):
                if token.startswith("host:") and token[5:] != lead.get("name") and token[5:] in {x.get("name") for x in tasks}:
                    problems.add(f"workflow.groups[{g}].tasks[{t}]", f"joins '{token[5:]}', but the Ray head must be the "
                                                                    f"group's lead ('{lead.get('name')}')")
        lead_text = yaml.safe_dump({k: lead.get(k) for k in ("command", "args", "files")})
        if "sleep infinity" in lead_text:
            problems.add(f"workflow.groups[{g}]", f"lead task '{lead.get('name')}' sleeps forever: the group only ends when "
                                                  "the lead exits, so the sweep driver must run in the lead and exit")
        env = lead.get("environment") or {}
        if str(env.get("NUM_WORKERS", "0")).isdigit() and int(env.get("NUM_WORKERS", "0")) > 0 and "STORAGE_PATH" in env \
                and not str(env["STORAGE_PATH"]).strip():
            problems.add(f"workflow.groups[{g}]", f"STORAGE_PATH is empty but there are {env['NUM_WORKERS']} worker node(s): trials "
                                                  "there need a shared run directory; set storage_path (s3://bucket/path or an NFS mount)")
        ports = {str((t.get("environment") or {}).get("RAY_PORT")) for t in tasks if (t.get("environment") or {}).get("RAY_PORT")}
        if len(ports) > 1:
            problems.add(f"workflow.groups[{g}]", f"tasks use different RAY_PORT values {sorted(ports)}; workers must join the head's port")


# ------------------------------------------------------------------ entry points


def validate_text(text: str, sets: list[str] | None = None, set_strings: list[str] | None = None,
                  base_dir: Path | None = None) -> tuple[list[str], Any]:
    """All problems of a workflow file's text, and the rendered spec (None when it did not render)."""
    problems = Problems()
    sections = split_sections(text, problems)
    if "version" in sections:
        try:
            version = yaml.safe_load(sections["version"]).get("version")
        except yaml.YAMLError:
            version = None
        if isinstance(version, bool) or version not in (2, "2", 2.0):
            problems.add("version", f"{version!r}: only version 2 is accepted (or leave it out)")
    values: dict[str, Any] = {}
    if "default-values" in sections:
        try:
            values = (yaml.safe_load(sections["default-values"]) or {}).get("default-values") or {}
        except yaml.YAMLError as err:
            problems.add("default-values", f"not valid YAML ({err})")
        if not isinstance(values, dict):
            problems.add("default-values", "must be a mapping of variable names to values")
            values = {}
    values.update(parse_sets(sets or [], problems))
    values.update(parse_sets(set_strings or [], problems, "--set-string", cast=str))
    if "workflow" not in sections:
        return problems.items, None
    rendered = render(sections["workflow"], values, problems)
    if rendered is None:
        return problems.items, None
    leftover = [m.group(0) for m in re.finditer(r"\{\{[^}]*\}\}", rendered) if not SPECIAL.fullmatch(m.group(0))]
    for item in leftover:
        problems.add("workflow", f"'{item}' is left after rendering")
    try:
        spec = (yaml.safe_load(rendered) or {}).get("workflow")
    except yaml.YAMLError as err:
        problems.add("workflow", f"the rendered workflow is not valid YAML ({str(err).splitlines()[0]} ...)")
        return problems.items, None
    check_spec(spec, base_dir, problems)
    return problems.items, spec


def lint_warnings(spec: Any) -> list[str]:
    """What passes OSMO's checks but will not work for a tune_app sweep: a placeholder image, a bucket
    STORAGE_PATH in a task that gets no storage credentials."""
    warnings = []
    groups = (spec or {}).get("groups") or [{"tasks": [t]} for t in (spec or {}).get("tasks") or []]
    for g, group in enumerate(groups):
        for t, task in enumerate(group.get("tasks") or []):
            if not isinstance(task, dict):
                continue
            path = f"workflow.groups[{g}].tasks[{t}]"
            if isinstance(task.get("image"), str) and PLACEHOLDER_IMAGE.search(task["image"]):
                warnings.append(f"{path}.image: '{task['image']}' looks like a placeholder; give the image you pushed")
            storage = str((task.get("environment") or {}).get("STORAGE_PATH", ""))
            creds = task.get("credentials") or {}
            mapped = {env for body in creds.values() if isinstance(body, dict) for env in body}
            if is_uri(storage) and "AWS_SECRET_ACCESS_KEY" not in mapped and isinstance(creds, dict):
                warnings.append(f"{path}: STORAGE_PATH {storage} is a bucket but no storage credential is mapped "
                                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY); trials cannot write there")
    return warnings


def validate_file(path: str | Path, sets: list[str] | None = None, set_strings: list[str] | None = None) -> tuple[list[str], Any]:
    path = Path(path)
    text = read_text(path, "workflow file")
    return validate_text(text, sets, set_strings, base_dir=path.resolve().parent)


# ------------------------------------------------------------------ rendering a sweep's workflow


def workflow_template() -> Path:
    """``osmo/ray-sweep.yaml`` of this checkout (the Docker image copies the checkout to /app)."""
    path = Path(__file__).resolve().parents[2] / "osmo" / "ray-sweep.yaml"
    if not path.is_file():
        raise UserError(f"{path} not found: `osmo render` needs the osmo/ folder of a tune_app checkout")
    return path


PLACEHOLDER_IMAGE = re.compile(r"your-org|<|>")


def render_values(args) -> dict[str, Any]:
    """The workflow values ``osmo render`` sets for a sweep (before ``--set``), checked: the search
    space inside the checkout, a real image, credentials that follow the config, the data input."""
    repo = workflow_template().parents[1]
    try:
        space = Path(args.space).resolve().relative_to(repo)
    except ValueError:
        raise UserError(f"osmo render: {args.space} is outside the checkout {repo}; the workflow runs the copy inside the "
                        "image, so put the search space (and its base config) in the checkout and rebuild the image") from None
    sweep = load_sweep(args.space, overrides=args.override)
    argv: list[str] = []
    for item in args.override:
        check_render_value("--override", item)
        argv += ["--override", item]
    if args.dataset or args.data_url:
        key = "data.bag_dir" if args.data_kind == "bags" else "data.lerobot_root"
        argv += ["--override", f"{key}={{{{input:0}}}}"]     # the same local path on every node
    if args.data_url and not URL.match(args.data_url):
        raise UserError(f"--data-url {args.data_url}: not a bucket URL (s3://, gs://, azure://, tos://, swift://)")
    if args.dataset and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*(:[A-Za-z0-9._-]+)?", args.dataset):
        raise UserError(f"--dataset {args.dataset!r}: an OSMO dataset is NAME or NAME:TAG")
    storage_path = args.storage_path or ""
    if is_uri(storage_path) and not args.storage_credential:
        raise UserError(f"--storage-path {storage_path}: a bucket run directory needs its credentials in every task; give "
                        "--storage-credential NAME (osmo credential set NAME --type GENERIC --payload access_key_id=... "
                        "access_key=... region=...; see osmo/README.md)")
    if args.image is None or PLACEHOLDER_IMAGE.search(args.image):
        raise UserError(f"--image {args.image or '(not given)'}: give the image you built and pushed from the Dockerfile, "
                        "e.g. nvcr.io/my-org/tune_app:1")
    values = {"num_workers": args.workers, "search_space": space.as_posix(), "sweep_name": sweep.name,
              "workflow_name": workflow_name(sweep.name), "image": args.image, "storage_path": storage_path,
              "dataset": args.dataset or "", "data_url": args.data_url or "", "tune_app_argv": json.dumps(argv),
              "storage_credential": args.storage_credential or "", "storage_endpoint": bool(args.storage_endpoint),
              "shm": bool(args.shm), "shm_size": args.shm_size or "",
              # Credentials follow the config: a tracker the sweep does not use needs no credential.
              "wandb_credential": "wandb" if sweep.base.wandb.enabled else "",
              "mlflow_credential": "mlflow" if sweep.base.mlflow.enabled else ""}
    if args.shm_size:
        try:
            parse_size(args.shm_size)
        except ValueError as exc:
            raise UserError(f"--shm-size: {exc}") from None
    for key in ("cpu", "gpu", "memory", "storage", "exec_timeout"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    return values


def workflow_name(sweep_name: str) -> str:
    """An OSMO workflow name for a sweep: letters, digits, '-' and '_', starting with a letter, at most 64."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", sweep_name)
    if not name[:1].isalpha():
        name = f"sweep-{name}"
    return name[:MAX_NAME].rstrip("-_") or "sweep"


JINJA_OPENINGS = ("{{", "{%", "{#")
IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")


class _Placeholder(str):
    """A string value stands in the Jinja render as an inert token (so nothing of it can become YAML
    or Jinja syntax) while ``{% if value %}`` still sees the real value's truth."""

    def __new__(cls, token: str, truth: bool):
        obj = super().__new__(cls, token)
        obj.truth = truth
        return obj

    def __bool__(self) -> bool:
        return self.truth


def check_render_value(key: str, value: Any) -> None:
    """A workflow value that can be rendered safely: a scalar, one line, no Jinja syntax (OSMO renders the
    submitted file with Jinja again), and for ``image`` an image reference."""
    where = f"osmo render: {key}={value!r}"
    if isinstance(value, (list, dict)) or value is None:
        raise UserError(f"{where}: workflow values are strings or numbers")
    if isinstance(value, str):
        if any(seq in SPECIAL.sub("", value) for seq in JINJA_OPENINGS):     # OSMO's own tokens are protected
            raise UserError(f"{where}: contains a Jinja opening ({', '.join(JINJA_OPENINGS)}), which OSMO would evaluate; remove it")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise UserError(f"{where}: contains a line break or control character; give it on one line")
        if key == "image" and not IMAGE.match(value):
            raise UserError(f"{where}: not a container image reference (e.g. nvcr.io/my-org/tune_app:1.0)")


def _substitute(node: Any, tokens: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {_substitute(k, tokens): _substitute(v, tokens) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, tokens) for v in node]
    if isinstance(node, str):
        for token, real in tokens.items():
            node = node.replace(token, real)
    return node


def _inline_files(spec: dict, base_dir: Path) -> None:
    """``localpath`` entry scripts become ``contents``, so the file can be submitted from anywhere."""
    for group in spec.get("groups") or []:
        for task in group.get("tasks") or []:
            for f in task.get("files") or []:
                if "localpath" in f:
                    f["contents"] = (base_dir / f.pop("localpath")).read_text()


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def render_workflow(values: dict[str, Any], template: Path | None = None) -> str:
    """The workflow template rendered for ``values`` into a complete workflow: built as data, every
    value put in by a YAML library (never pasted into text), entry scripts inlined. Values that
    cannot be represented safely are refused with one line naming the key."""
    template = template or workflow_template()
    text = template.read_text()
    problems = Problems()
    sections = split_sections(text, problems)
    defaults = (yaml.safe_load(sections["default-values"]) or {}).get("default-values") or {}
    unknown = set(values) - set(defaults)
    if unknown:
        raise UserError(f"osmo render: unknown workflow value(s) {sorted(unknown)} (known: {', '.join(sorted(defaults))})")
    merged = {**defaults, **values}
    tokens: dict[str, str] = {}
    jinja_values: dict[str, Any] = {}
    for key, value in merged.items():
        check_render_value(key, value)
        if isinstance(value, str) and not isinstance(value, bool):
            token = f"tuneappvalue{len(tokens)}x"
            tokens[token] = value
            jinja_values[key] = _Placeholder(token, bool(value))
        else:
            jinja_values[key] = value
    rendered = render(sections["workflow"], jinja_values, problems)
    if rendered is None:
        raise UserError(f"osmo render: {template}: {'; '.join(problems.items)}")
    spec = _substitute((yaml.safe_load(rendered) or {}).get("workflow"), tokens)
    _inline_files(spec, template.parent)
    header = text[: text.index("workflow:")]
    return (header.rstrip() + "\n# Rendered by `python -m tune_app osmo render`: complete, no template values left.\n"
            + yaml.dump({"workflow": spec}, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True))
