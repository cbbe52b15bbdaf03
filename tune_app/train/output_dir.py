"""``training.output_dir`` of ``tune_app train``: checked before anything is written, claimed after.

tune_app marks a folder it trains into with ``.tune_app_train``; ``--overwrite`` deletes a folder
only when that marker is there, so a user's own folder named as ``output_dir`` is never deleted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tune_app.checks import check_writable_dir
from tune_app.errors import UserError
from tune_app.policy.manifest import complete_checkpoints

MARKER = ".tune_app_train"


def check_train_dir(out: Path, resume: bool, overwrite: bool) -> bool:
    """Whether ``out`` holds an earlier run (and ``resume`` continues it); raises when the flags
    do not fit what is there. Writes nothing."""
    check_writable_dir(out, "training.output_dir")
    if out.is_symlink():
        raise UserError(f"training.output_dir {out} is a symbolic link; tune_app does not write through it. "
                        "Choose another training.output_dir")
    previous = out.is_dir() and any(out.glob("checkpoint_*"))
    ours = (out / MARKER).is_file()
    if previous and not ours:
        raise UserError(f"training.output_dir {out} holds checkpoints that this version of tune_app did not write "
                        f"(no {MARKER}); tune_app will not change or delete them. Choose another training.output_dir")
    if previous and not (resume or overwrite):
        raise UserError(f"training.output_dir {out} already holds a run; pass --resume to continue it "
                        "or --overwrite to start over (or choose another training.output_dir)")
    if resume and not previous:
        raise UserError(f"--resume: training.output_dir {out} holds no run to continue; drop --resume to start one")
    if resume and not complete_checkpoints(out):
        raise UserError(f"--resume: no complete checkpoint in {out} (every checkpoint_* is partly written); "
                        "start over with --overwrite")
    if out.is_dir() and any(out.iterdir()) and not ours:
        raise UserError(f"training.output_dir {out} is a folder with other files in it; tune_app trains into a new "
                        "or empty folder. Choose another training.output_dir")
    return previous and resume


def claim_train_dir(out: Path, overwrite: bool) -> None:
    """Make ``out`` (deleting tune_app's earlier run there with ``overwrite``) and mark it as tune_app's."""
    if overwrite and (out / MARKER).is_file() and not out.is_symlink():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
