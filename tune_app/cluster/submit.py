"""``python -m tune_app submit SPACE --address http://HEAD:8265``: a sweep as a Ray job on a running cluster.

The checkout's git-tracked files, plus the search space and the base config it names, are uploaded
as the job's working directory (never untracked files such as ``.env``, virtualenvs, runs or caches) and the job runs ``python -m tune_app run SPACE --address
auto`` on the cluster. The working directory is temporary, so the run directory must be somewhere
that outlives the job: ``--storage`` (a path on the cluster's shared storage or a bucket URI) or the
sweep file's ``ray.storage_path``.
"""

from __future__ import annotations

import asyncio
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tune_app.errors import UserError
from tune_app.sweep.space import load_sweep

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def checkout_root() -> Path:
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise UserError(f"submit: {root} is not a tune_app checkout (no pyproject.toml); run it from a clone")
    return root


def upload_list(root: Path, named: list[Path]) -> list[str]:
    """What ``submit`` uploads: the checkout's git-tracked files that exist, plus ``named`` files
    (the search space and its base config), as paths relative to ``root``."""
    try:
        proc = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        proc = None
    if proc is None or proc.returncode != 0:
        raise UserError(f"submit: {root} is not a git checkout (or git is missing); submit uploads the checkout's "
                        "tracked files only, so run it from a clone of tune_app")
    files = {f for f in proc.stdout.decode().split("\0") if f and (root / f).is_file()}
    for path in named:
        try:
            files.add(path.resolve().relative_to(root).as_posix())
        except ValueError:
            raise UserError(f"submit: {path} is outside the checkout {root}; put it in the checkout") from None
    return sorted(files)


def build_entrypoint(space_rel: str, storage: str, name: str | None, overrides: list[str], extra: list[str]) -> str:
    args = ["python", "-m", "tune_app", "run", space_rel, "--address", "auto", "--storage", storage]
    if name:
        args += ["--name", name]
    for item in overrides:
        args += ["--override", item]
    return shlex.join(args + extra)


def submit(space: str, address: str, storage: str | None, name: str | None, overrides: list[str], extra: list[str],
           follow: bool) -> int:
    from ray.job_submission import JobSubmissionClient

    sweep = load_sweep(space, overrides=overrides, name=name, storage_path=storage)
    storage = storage or sweep.storage_path
    if not storage:
        raise UserError("submit: give --storage (a path on the cluster's shared storage, or a bucket URI such as "
                        "s3://bucket/tune_app) or ray.storage_path in the sweep file: the job's working directory is "
                        "deleted with the job")
    root = checkout_root()
    try:
        space_rel = Path(space).resolve().relative_to(root).as_posix()
    except ValueError:
        raise UserError(f"submit: {space} is outside the checkout {root}, which is what gets uploaded; "
                        "put the search space (and its base config) in the checkout") from None
    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise UserError(f"--address {address}: no Ray dashboard/Jobs API there ({err}); give http://HEAD:8265") from None
    entrypoint = build_entrypoint(space_rel, storage, name, overrides, extra)
    uploads = upload_list(root, [Path(space).resolve(), *([sweep.base_path] if sweep.base_path else [])])
    submission_id = f"tune-app-{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    deadline = time.monotonic() + 120
    with tempfile.TemporaryDirectory(prefix="tune_app_submit_") as staging:
        for rel in uploads:
            (Path(staging) / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, Path(staging) / rel)
        while True:
            try:
                job_id = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": staging},
                                           submission_id=submission_id)
                break
            except RuntimeError as err:
                # A freshly started head answers this until its job agent has registered (seconds).
                if "No available agent" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(2)
    print(f"submitted job {job_id} to {address}: {entrypoint}", flush=True)
    if not follow:
        print(f"follow it with: ray job logs --follow {job_id} --address {address}   "
              f"(status: ray job status {job_id} --address {address})")
        return 0

    async def stream() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(stream())
    while (status := str(client.get_job_status(job_id)).split(".")[-1]) not in TERMINAL:
        time.sleep(1)
    info = client.get_job_info(job_id)
    print(f"job {job_id}: {status}" + (f" ({info.message})" if info.message and status != "SUCCEEDED" else ""))
    return 0 if status == "SUCCEEDED" else 1
