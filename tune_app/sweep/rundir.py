"""A sweep's run directory, local or in a bucket, behind one interface.

``RunDir("runs/lr_grid")``, ``RunDir("file:///shared/runs/lr_grid")`` and
``RunDir("s3://bucket/runs/lr_grid")`` answer the same questions (is a file there, read it, write
it, delete the whole folder) so no caller decides "path or URI?" itself or builds ``Path(uri)``.
Every URI (``file://`` included) goes through pyarrow's filesystem, the same code path as a bucket;
a plain path is a local folder. A URI run directory also has a local working copy, ``runs/<name>/`` under the current
directory: where the end-of-sweep summary is assembled (:mod:`.storage` mirrors and uploads) and
where stores that need a local disk (MLflow's default sqlite file, W&B's offline runs) live until
they are uploaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs
import yaml

from tune_app.checks import check_writable_dir, is_uri
from tune_app.config import Config, build_config
from tune_app.errors import UserError
from tune_app.sweep.space import Sweep


class RunDir:
    def __init__(self, location: str | Path, fs=None):
        text = str(location)
        self.remote = fs is not None or is_uri(text)
        if self.remote:
            self.uri = text.rstrip("/")
            if fs is None or is_uri(self.uri):
                fs_of_uri, self._root = _split(self.uri) if is_uri(self.uri) else (None, self.uri)
                self._fs = fs or fs_of_uri
            else:
                self._fs, self._root = fs, self.uri
            self._root = self._root.rstrip("/")
        else:
            self.path = Path(text.removeprefix("file://")).expanduser().absolute()
            self.uri = str(self.path)

    def __str__(self) -> str:
        return self.uri

    @property
    def name(self) -> str:
        return self.uri.rsplit("/", 1)[-1]

    @property
    def storage(self) -> str:
        """The folder or URI the run directory lives in (``--storage``)."""
        return self.uri.rsplit("/", 1)[0]

    @property
    def local_dir(self) -> Path:
        """Where this run's files are on this machine: the folder itself, or the working copy of a bucket run."""
        return Path("runs").absolute() / self.name if self.remote else self.path

    def filesystem(self):
        """``(pyarrow filesystem, root path in it)`` of a bucket run directory."""
        return self._fs, self._root

    def exists(self, name: str = "") -> bool:
        if not self.remote:
            target = self.path / name if name else self.path
            return target.is_file() if name else target.is_dir()
        info = self._fs.get_file_info(f"{self._root}/{name}" if name else self._root)
        return info.type == (pyarrow.fs.FileType.File if name else pyarrow.fs.FileType.Directory)

    def read_text(self, name: str) -> str | None:
        """The text of a file in the run directory, or None when it is not there."""
        if not self.remote:
            target = self.path / name
            return target.read_text() if target.is_file() else None
        try:
            with self._fs.open_input_stream(f"{self._root}/{name}") as f:
                return f.read().decode()
        except (FileNotFoundError, OSError):
            return None

    def write_text(self, name: str, text: str) -> None:
        """Write a file whole: a reader sees the old or the new text, never a part (a bucket
        object appears when its upload ends; a local file is renamed into place)."""
        if not self.remote:
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            try:
                tmp.write_text(text)
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            return
        target = f"{self._root}/{name}"
        self._fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        with self._fs.open_output_stream(target) as f:
            f.write(text.encode())

    def make(self) -> None:
        if not self.remote:
            self.path.mkdir(parents=True, exist_ok=True)

    def delete(self) -> None:
        """Delete the whole run directory (callers check first that it is tune_app's)."""
        if not self.remote:
            if self.path.is_dir() and not self.path.is_symlink():
                shutil.rmtree(self.path)
        elif self.exists():
            self._fs.delete_dir(self._root)


# ---------------------------------------------------------------- a sweep's files in its run directory

SWEEP_FILE = "sweep.json"      # what resume and status need (and the mark of a tune_app sweep)
# Each trial's id, status, parameters and folder, a JSON object per line (tune_app.sweep.progress). Not
# ".json": a resumed Tune copies every *.json/*.pkl of the run dir to its staging folder and uploads
# them back at each state save, which would put an old copy over the live one.
TRIALS_FILE = "trials.jsonl"
RESULTS_FILE = "result.json"          # a trial's reports, one JSON line each (Tune's, in the trial's folder)
RUNGS_FILE = "rungs.jsonl"            # ASHA decisions (tune_app.sweep.rungs)


def parse_jsonl(text: str) -> list[dict[str, Any]]:
    """The records of a JSON-lines file's text; a line that does not parse (being written right now) is skipped."""
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def run_dir_for(sweep: Sweep) -> str:
    storage = sweep.storage_path or str(Path("runs").resolve())
    return str(RunDir(f"{storage.rstrip('/')}/{sweep.name}"))


def sweep_exists(run_dir: str) -> bool:
    """Whether ``run_dir`` holds a sweep that ``resume`` can continue."""
    rd = RunDir(run_dir)
    return rd.exists(SWEEP_FILE) and rd.exists("tuner.pkl")


def fingerprint(sweep: Sweep) -> str:
    """What makes a sweep this sweep: its search-space file's content and the resolved base config."""
    blob = json.dumps({"space": sweep.raw, "base": sweep.base.to_dict()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_same_sweep(sweep: Sweep, run_dir: str) -> None:
    """``--resume-existing``: the stored sweep must be this one, not an older one under the same name."""
    try:
        stored = json.loads(RunDir(run_dir).read_text(SWEEP_FILE) or "{}").get("fingerprint")
    except (ValueError, UnicodeDecodeError, AttributeError):
        stored = None
    if stored != fingerprint(sweep):
        raise UserError(f"--resume-existing: {run_dir} holds a sweep '{sweep.name}' with another search space or base "
                        "config; start over with --overwrite, or give the sweep a new name (--name, or sweep_name on OSMO)")


def check_run_dir(sweep: Sweep, overwrite: bool) -> str:
    """Where the sweep will live, checked without writing: writable, and either free or (with
    ``overwrite``) an earlier tune_app sweep. Returns the run directory."""
    run_dir = run_dir_for(sweep)
    rd = RunDir(run_dir)
    if not rd.remote:
        check_writable_dir(rd.path, "--storage")
        if rd.path.is_symlink():
            raise UserError(f"{rd.path} is a symbolic link; tune_app does not write through it. Pick another --name or --storage")
        if not (rd.path.exists() and any(rd.path.iterdir())):
            return run_dir
        if not _is_tune_app_run(rd):
            raise UserError(f"{rd.path} exists and is not a tune_app sweep (no valid {SWEEP_FILE}); tune_app will not "
                            "write into or delete it. Pick another --name or --storage")
    else:
        local = rd.local_dir
        if local.exists() and any(local.iterdir()) and not (local / SWEEP_FILE).is_file():
            raise UserError(f"{local} (the local working copy of {run_dir}) exists and is not a tune_app sweep; "
                            "move it away or run from another folder")
        if not rd.exists(SWEEP_FILE):
            return run_dir
    if not overwrite and not sweep_exists(run_dir):
        raise UserError(f"{run_dir} holds a sweep named '{sweep.name}' that never started (no tuner.pkl); start over "
                        "with --overwrite, or pick another --name")
    if not overwrite:
        raise UserError(f"{run_dir} already holds a sweep named '{sweep.name}'; continue it with "
                        f"`python -m tune_app resume {run_dir}` (or run --resume-existing), start over with --overwrite, "
                        "or pick another --name")
    return run_dir


def _is_tune_app_run(rd: RunDir) -> bool:
    """Whether the run directory holds a ``sweep.json`` that tune_app wrote (the run's marker)."""
    try:
        meta = json.loads(rd.read_text(SWEEP_FILE) or "null")
    except (ValueError, UnicodeDecodeError, OSError):
        return False
    return isinstance(meta, dict) and meta.get("name") == rd.name and "parameters" in meta


def claim_run_dir(run_dir: str, overwrite: bool) -> None:
    """Make the run directory, deleting an earlier sweep there first when ``overwrite`` (only a
    folder that :func:`check_run_dir` found to be a tune_app sweep, directly below the storage root)."""
    rd = RunDir(run_dir)
    if overwrite and _is_tune_app_run(rd):
        rd.delete()
    rd.make()


def write_sweep_files(run_dir: str, sweep: Sweep) -> dict[str, Any]:
    """Write sweep.json and base_config.yaml (what resume/status need); returns the sweep.json content."""
    meta = {"name": sweep.name, "source": str(sweep.source.resolve()), "method": sweep.method,
            "metric": sweep.metric, "mode": sweep.mode, "parameters": list(sweep.parameters),
            "total_steps": sweep.base.training.steps, "fingerprint": fingerprint(sweep), "raw": sweep.raw}
    rd = RunDir(run_dir)
    rd.write_text(SWEEP_FILE, json.dumps(meta, indent=2, default=str))
    rd.write_text("base_config.yaml", yaml.safe_dump(sweep.base.to_dict(), sort_keys=False))
    return meta


def remove_run_dir(run_dir: str) -> None:
    """Delete a run directory this sweep claimed (a tune_app sweep by its sweep.json, or empty)."""
    rd = RunDir(run_dir)
    if _is_tune_app_run(rd) or (not rd.remote and rd.path.is_dir() and not any(rd.path.iterdir())):
        rd.delete()


@dataclass
class Resumable:
    """A sweep directory checked for ``resume``: its sweep file and base config read and valid."""

    run_dir: str
    meta: dict[str, Any]
    base: Config


def load_resumable(run_dir: str) -> Resumable:
    """Check (without Ray and without writing) that ``run_dir`` is a sweep ``resume`` can continue."""
    rd = RunDir(run_dir)
    run_dir = str(rd)
    if not rd.remote and not rd.path.is_dir():
        raise UserError(f"{run_dir}: no such sweep directory; give the directory `run` printed, e.g. runs/lr_grid")
    if not sweep_exists(run_dir):
        raise UserError(f"{run_dir}: not a tune_app sweep directory (no {SWEEP_FILE} and tuner.pkl); "
                        "give the directory `run` printed, e.g. runs/lr_grid")
    if not rd.remote:
        check_writable_dir(rd.path, "resume")
    source = f"{run_dir}/{SWEEP_FILE}"
    try:
        meta = json.loads(rd.read_text(SWEEP_FILE) or "null")
        base_raw = yaml.safe_load(rd.read_text("base_config.yaml") or "null")
    except (ValueError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"{source}: damaged sweep files ({type(exc).__name__}); the run directory cannot be resumed") from None
    if not isinstance(meta, dict) or not all(k in meta for k in ("name", "metric", "parameters", "total_steps")):
        raise UserError(f"{source}: not a tune_app sweep file; the run directory cannot be resumed")
    if not isinstance(base_raw, dict):
        raise UserError(f"{run_dir}/base_config.yaml: missing or not a config; the run directory cannot be resumed")
    return Resumable(run_dir, meta, build_config(base_raw, source=f"{run_dir}/base_config.yaml"))


def _split(uri: str):
    return pyarrow.fs.FileSystem.from_uri(uri)
