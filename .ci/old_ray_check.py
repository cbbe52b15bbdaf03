"""Stock mode on the oldest Ray in pyproject's range (run by .ci/old-ray in a venv with that Ray).

A 2-trial grid sweep is killed (SIGKILL) once its first trial finished and its second checkpointed, `status` shows it, `resume`
finishes it without rerunning the finished trial, and a `train` run ends with a checkpoint. Every
command must say that it runs in stock Ray mode. Exits non-zero with the failing step's output.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray

REPO = Path(__file__).resolve().parents[1]
SHORT = ["training.steps=40", "training.log_freq=10", "training.eval_freq=20", "training.save_freq=10",
         "training.val_batches=2", "data.demo_episodes=12", "data.demo_episode_len=30"]


def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tune_app", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def check(ok: bool, what: str, proc: subprocess.CompletedProcess | None = None) -> None:
    if not ok:
        detail = f"\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}" if proc else ""
        sys.exit(f"old Ray {ray.__version__}: FAILED: {what}{detail}")
    print(f"old Ray {ray.__version__}: ok: {what}", flush=True)


def events(run_dir: Path) -> list[dict]:
    path = run_dir / "trial_events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def main() -> None:
    overrides = sum((["--override", o] for o in SHORT), [])
    with tempfile.TemporaryDirectory(prefix="old_ray_") as tmp:
        tmp = Path(tmp)
        space = tmp / "two.yaml"
        space.write_text(f"method: grid\nmetric: {{name: val_loss, goal: minimize}}\nbase_config: {REPO / 'configs' / 'act_tiny.yaml'}\n"
                         "parameters:\n  training.lr: {values: [1.0e-4, 5.0e-5]}\nray: {max_concurrent_trials: 1, name: two}\n")
        run_dir = tmp / "two"
        proc = subprocess.Popen([sys.executable, "-m", "tune_app", "run", str(space), "--storage", str(tmp), "--num-cpus", "2",
                                 *overrides], cwd=REPO, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 600

        def second_trial_checkpointed() -> bool:
            done = {e["trial_id"] for e in events(run_dir) if e["event"] == "complete"}
            second = [e["trial_id"] for e in events(run_dir) if e["event"] == "start" and e["trial_id"] not in done]
            return bool(done and second and list((run_dir / "trials" / f"train-{second[0]}").glob("checkpoint_0000[1-9]0")))

        while not second_trial_checkpointed():
            if proc.poll() is not None:
                check(False, f"the sweep ended (rc {proc.returncode}) before it could be killed:\n{proc.stdout.read()[-4000:]}")
            if time.monotonic() > deadline:
                check(False, "the first trial finished within 10 minutes")
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)
        first_out = proc.stdout.read()
        proc.wait()
        check("stock Ray mode" in first_out, "run says it runs in stock Ray mode")
        finished = next(e["trial_id"] for e in events(run_dir) if e["event"] == "complete")

        status = cli("status", str(run_dir))
        check(status.returncode == 0 and "TERMINATED" in status.stdout, "status of the killed sweep", status)
        resumed = cli("resume", str(run_dir), "--num-cpus", "2")
        check(resumed.returncode == 0 and "stock Ray mode" in resumed.stdout, "resume finishes the sweep", resumed)
        starts = [e["trial_id"] for e in events(run_dir) if e["event"] == "start"]
        check(starts.count(finished) == 1, "the finished trial was not rerun")
        data = json.loads(cli("status", str(run_dir), "--json").stdout)
        check([t["state"] for t in data["trials"]] == ["TERMINATED"] * 2 and all(t["last_step"] == 40 for t in data["trials"]),
              "status --json: both trials TERMINATED at step 40")
        check((run_dir / "best" / "pretrained_model" / "model.safetensors").is_file(), "best/ checkpoint written")

        train = cli("train", "--config", str(REPO / "configs" / "act_tiny.yaml"), "--num-cpus", "2",
                    "--override", f"training.output_dir={tmp / 'train'}", *overrides)
        check(train.returncode == 0 and "stock Ray mode" in train.stdout and "final checkpoint" in train.stdout,
              "train runs to a final checkpoint", train)


if __name__ == "__main__":
    main()
