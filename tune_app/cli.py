"""``python -m tune_app``: argument parsing and the subcommands.

User mistakes raise :class:`UserError` anywhere below; they are caught once, here, printed as one
line, and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

from tune_app.checks import check_reachable, check_writable_dir, check_writable_file, is_uri
from tune_app.cluster import connect as cluster
from tune_app.cluster.osmo import cast_set, lint_warnings, render_values, render_workflow, validate_file, validate_text, workflow_template
from tune_app.cluster.submit import submit
from tune_app.config import load_config, save_config
from tune_app.errors import UserError, as_user_error, find_user_error, mask_secrets
from tune_app.inspection.report import write_report
from tune_app.sweep.results import load_run, render_table
from tune_app.sweep.rundir import SWEEP_FILE, RunDir, check_run_dir, check_same_sweep, load_resumable, run_dir_for, sweep_exists
from tune_app.sweep.space import load_sweep
from tune_app.train.output_dir import check_train_dir, claim_train_dir


def _int_at_least(low: int):
    """An argparse type: an integer >= ``low`` (0 and negative values are values, checked, not "unset")."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
        return value
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0")
    return value


def _port_or_zero(text: str) -> int:
    return 0 if text.strip() == "0" else _port(text)


def _port(text: str) -> int:
    value = _int_at_least(1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (1-65535)")
    return value


def _add_connection_args(p: argparse.ArgumentParser, dashboard: bool = False) -> None:
    p.add_argument("--address", help="Ray cluster to join, e.g. auto or HOST:6379 (default: RAY_ADDRESS, else an embedded local Ray)")
    p.add_argument("--num-cpus", type=_int_at_least(1), help="CPUs of the embedded local Ray (default: ray.num_cpus, else all)")
    p.add_argument("--wait-nodes", type=_int_at_least(1), metavar="N", help="wait until N Ray nodes are alive before starting")
    p.add_argument("--wait-timeout", type=_positive_float, default=600.0, metavar="S", help="give up waiting for nodes after S seconds (default 600)")
    if dashboard:
        p.add_argument("--dashboard", action="store_true",
                       help="serve tune_app's live sweep dashboard (--tune-dashboard-port) and, for the embedded local Ray, "
                            "Ray's dashboard (--dashboard-port); print both URLs and keep them up after the sweep until Ctrl-C")
        p.add_argument("--dashboard-host", default="127.0.0.1", help="interface for --dashboard (default 127.0.0.1; "
                       "0.0.0.0 exposes them to the network)")
        p.add_argument("--dashboard-port", type=_port_or_zero, default=8265,
                       help="port of Ray's dashboard for --dashboard (default 8265; 0: any free port)")
        p.add_argument("--tune-dashboard-port", type=_port_or_zero, default=8266,
                       help="port of tune_app's dashboard for --dashboard (default 8266; 0: any free port)")
        p.add_argument("--no-hold", action="store_true", help="with --dashboard: stop serving when the sweep ends (a batch job)")


def _connect(args: argparse.Namespace, num_cpus: int | None, storage: str | None = None):
    """Join or start Ray as the arguments say, wait for nodes, check the storage is shared by all of them."""

    kwargs = {}
    if getattr(args, "dashboard", False) and args.tune_dashboard_port and not cluster.port_free(args.dashboard_host, args.tune_dashboard_port):
        raise UserError(f"--tune-dashboard-port {args.tune_dashboard_port}: the port is in use on {args.dashboard_host}; choose another")
    if getattr(args, "dashboard", False) and not (args.address or os.environ.get("RAY_ADDRESS")):   # a joined cluster has its own
        if args.dashboard_port and not cluster.port_free(args.dashboard_host, args.dashboard_port):
            raise UserError(f"--dashboard-port {args.dashboard_port}: the port is in use on {args.dashboard_host}; choose another")
        kwargs = {"dashboard_host": args.dashboard_host, "dashboard_port": args.dashboard_port}
    conn = cluster.connect(args.address, num_cpus=num_cpus, **kwargs)
    if args.wait_nodes:
        cluster.wait_for_nodes(args.wait_nodes, args.wait_timeout)
        conn = cluster.refresh(conn)
    if storage:
        cluster.check_shared_storage(storage)
    if getattr(args, "dashboard", False):
        token = cluster.token_file()
        login = f" (it asks for this cluster's token: paste the content of {token}, readable only by you)" if token else ""
        print(f"Ray dashboard: {conn.dashboard_url}{login}", flush=True)
    return conn


def _start_dashboard(args: argparse.Namespace, conn, run_dir: str):
    """tune_app's dashboard for ``run_dir`` next to Ray's (``run --dashboard``); None without the flag."""
    if not getattr(args, "dashboard", False):
        return None
    from tune_app.inspection.dashboard import ClusterView, DashboardServer

    server = DashboardServer(run_dir, host=args.dashboard_host, port=args.tune_dashboard_port, cluster=ClusterView(conn.dashboard_url))
    print(f"tune_app dashboard: {server.start()} (the sweep, live; Ray's dashboard: {conn.dashboard_url})", flush=True)
    return server


def _hold_dashboard(args: argparse.Namespace, conn, server=None) -> None:
    if not getattr(args, "dashboard", False) or args.no_hold:
        return

    signal.signal(signal.SIGINT, signal.default_int_handler)     # Tune's fit() leaves its own handler installed
    try:
        where = f"{server.url} and {conn.dashboard_url}" if server else str(conn.dashboard_url)
        print(f"sweep done; the dashboards stay up at {where} -- press Ctrl-C to stop", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)                # a second Ctrl-C must not cut the shutdown short


def _check_init_from(configs) -> None:
    """Every ``training.init_from`` checkpoint loads and fits its trial's model (once per checkpoint and model
    shape); read-only, so it comes before the data and weight caches are filled."""
    from tune_app.policy.checkpoint import ARCHITECTURE, check_init_from  # deferred: imports torch (seconds)

    seen = set()
    for cfg in configs:
        key = (cfg.training.init_from, *(getattr(cfg.model, k) for k in ARCHITECTURE))
        if cfg.training.init_from and key not in seen:
            seen.add(key)
            check_init_from(cfg)


def cmd_train(args: argparse.Namespace) -> int:
    if args.init_from:
        args.override = [*args.override, f"training.init_from={args.init_from}"]
    cfg = load_config(args.config, args.override)
    out = Path(cfg.training.output_dir)
    resuming = check_train_dir(out, args.resume, args.overwrite)
    # Deferred: torch and Ray Train take seconds to import; a mistake above is answered before.
    from tune_app import fastpath, tracking
    from tune_app.data import check_batches_fit, describe_source, ensure_data
    from tune_app.policy import weights
    from tune_app.train import schedule
    from tune_app.trainable import MetricsFileCallback, fit_run

    if warning := schedule.describe(cfg.training):
        print(f"warning: {warning}", file=sys.stderr)
    if cfg.mlflow.enabled:
        tracking.check_mlflow(tracking.mlflow_uri(cfg, out))
    _check_address(args)
    _check_init_from([cfg])
    ensure_data(cfg)
    check_batches_fit([cfg])
    weights.prefetch([cfg])
    tracking.prepare_environment(cfg, out)

    conn = _connect(args, _first_set(args.num_cpus, cfg.ray.num_cpus), storage=str(out.parent))
    need = cfg.ray.num_workers * cfg.ray.cpus_per_worker
    if need > conn.num_cpus:
        cluster.shutdown()
        raise UserError(f"ray.num_workers x ray.cpus_per_worker needs {need:g} CPUs but the Ray cluster has "
                        f"{conn.num_cpus:g}; lower them or add CPUs")
    claim_train_dir(out, args.overwrite)
    save_config(cfg, out / "config.yaml")
    mode = fastpath.choose(cfg.ray.fast_start)
    if not mode.fast:
        print(mode.line(), flush=True)
    print(f"tune_app train: {describe_source(cfg)}, {cfg.ray.num_workers} DDP worker(s), "
          f"{cfg.training.steps} steps -> {out}", flush=True)
    if resuming:
        print(f"tune_app train: resuming the run in {out} from its latest complete checkpoint", flush=True)
    try:
        result = fit_run(cfg, out.parent, out.name, conn.num_gpus, mode, progress=True,
                         callbacks=[MetricsFileCallback(out / "metrics.jsonl"), *tracking.train_callbacks(cfg, out)])
    except Exception as exc:  # noqa: BLE001 - a user's mistake inside a worker still gets one line
        if (user := find_user_error(exc)) is not None:
            raise user from None
        raise
    finally:
        cluster.shutdown()
    if result.checkpoint is None:
        print("tune_app train: finished without a checkpoint", file=sys.stderr)
        return 1
    print(f"final checkpoint: {result.checkpoint.path}")
    for hint in (tracking.sync_hint(out) if cfg.wandb.enabled else None, tracking.mlflow_ui_hint(cfg, str(out))):
        if hint:
            print(hint)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.space, overrides=args.override, name=args.name, storage_path=args.storage,
                       max_concurrent=args.max_concurrent)
    # Deferred: torch and Ray take seconds to import; a mistake in the sweep file is answered before.
    from tune_app import fastpath, tracking
    from tune_app.data import check_batches_fit, ensure_data
    from tune_app.policy import weights
    from tune_app.sweep.run import run_sweep

    if sweep.base.mlflow.enabled:
        tracking.check_mlflow(tracking.mlflow_uri(sweep.base, "."))
    _check_address(args)
    if args.resume_existing and sweep_exists(run_dir_for(sweep)):
        # A rescheduled job (OSMO, a preempted node) picks up where it stopped instead of starting over,
        # but only the same sweep: a resubmit with an edited search space must not resume the old one.
        check_same_sweep(sweep, run_dir_for(sweep))
        print(f"tune_app run: sweep '{sweep.name}' exists in {run_dir_for(sweep)}; resuming it", flush=True)
        args.run_dir = run_dir_for(sweep)
        args.num_cpus = _first_set(args.num_cpus, sweep.base.ray.num_cpus)
        return cmd_resume(args)
    run_dir = check_run_dir(sweep, overwrite=args.overwrite)   # refuse an existing sweep before starting Ray
    if args.eval_best:
        from tune_app.inspection.evaluate import check_device  # deferred: imports torch (seconds)

        check_device(args.eval_device)
    trial_configs = sweep.trial_configs()
    _check_init_from(trial_configs)
    ensure_data(sweep.base)
    check_batches_fit(trial_configs)
    weights.prefetch(trial_configs)
    tracking.prepare_environment(sweep.base, run_dir)
    mode = fastpath.choose(sweep.base.ray.fast_start)
    if not mode.fast:
        print(mode.line(), flush=True)
    server = None
    try:
        conn = _connect(args, _first_set(args.num_cpus, sweep.base.ray.num_cpus), storage=run_dir.rsplit("/", 1)[0])
        server = _start_dashboard(args, conn, run_dir)
        summary = run_sweep(sweep, conn, overwrite=args.overwrite, max_failures=args.max_failures, mode=mode)
        _hold_dashboard(args, conn, server)
    finally:
        if server is not None:
            server.stop()
        cluster.shutdown()
    local = RunDir(run_dir).local_dir                # a bucket run's best/ is in its local working copy
    if args.eval_best and summary.get("best_trial") and (local / "best").is_dir():
        from tune_app.inspection.evaluate import run_eval  # deferred: imports torch (seconds)

        run_eval(str(local / "best"), None, [], args.eval_device, str(local / "best_eval.csv"))
    return _sweep_exit_code(summary)


def _first_set(*values):
    """The first value that is not None (0 is a value, not "unset")."""
    return next((v for v in values if v is not None), None)


def _check_address(args: argparse.Namespace) -> None:

    address = args.address or os.environ.get("RAY_ADDRESS")
    if address:
        check_reachable(address, "--address" if args.address else "RAY_ADDRESS")


def _sweep_exit_code(summary: dict) -> int:
    """0 done, 130 interrupted (resume it), 1 no trial produced the metric."""
    if summary.get("complete") is False:
        return 130
    return 0 if summary.get("best_trial") else 1


def cmd_resume(args: argparse.Namespace) -> int:
    sweep = load_resumable(args.run_dir)          # before Ray starts: is it a sweep at all?
    # Deferred: torch and Ray take seconds to import; a wrong folder is answered before.
    from tune_app import fastpath, tracking
    from tune_app.policy import weights
    from tune_app.sweep.run import resume_sweep

    _check_address(args)
    _check_init_from([sweep.base])
    weights.prefetch([sweep.base])
    tracking.prepare_environment(sweep.base, sweep.run_dir)
    mode = fastpath.choose(sweep.base.ray.fast_start)
    if not mode.fast:
        print(mode.line(), flush=True)
    storage = sweep.run_dir.rsplit("/", 1)[0]
    server = None
    try:
        conn = _connect(args, args.num_cpus, storage=storage if is_uri(storage) else str(Path(storage).resolve()))
        server = _start_dashboard(args, conn, sweep.run_dir)
        summary = resume_sweep(sweep, conn, mode)
        _hold_dashboard(args, conn, server)
    finally:
        if server is not None:
            server.stop()
        cluster.shutdown()
    return _sweep_exit_code(summary)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from tune_app.inspection.dashboard import ClusterView, DashboardServer

    if not RunDir(args.run_dir).exists(SWEEP_FILE):          # a wrong folder is one line, before serving
        raise UserError(f"{args.run_dir}: not a tune_app sweep directory (no sweep.json); give the directory `run` printed, "
                        "e.g. runs/lr_grid")
    view = None
    if args.address:
        conn = cluster.connect(args.address)
        view = ClusterView(conn.dashboard_url)
    server = DashboardServer(args.run_dir, host=args.host, port=args.port, cluster=view)
    print(f"tune_app dashboard: {server.start()} (sweep {args.run_dir}) -- press Ctrl-C to stop", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
        if args.address:
            cluster.shutdown()


def cmd_status(args: argparse.Namespace) -> int:


    run = load_run(args.run_dir)
    if args.json:
        print(json.dumps(run.summary(), indent=2, default=str))
    else:
        print(render_table(run))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from tune_app.inspection.evaluate import run_eval  # deferred: imports torch (seconds)

    run_eval(args.checkpoint, args.data, args.override, args.device, args.output, args.temporal_ensemble_coeff)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.exists() or out.is_symlink():
        raise UserError(f"-o {out}: already exists; export writes a new folder")
    check_writable_dir(out.parent, "-o")
    from tune_app.policy.checkpoint import export_lerobot  # deferred: imports torch (seconds)

    written = export_lerobot(args.checkpoint, out)
    print(f"exported a LeRobot ACT pretrained_model to {written}; load it with "
          f"lerobot.policies.act.modeling_act.ACTPolicy.from_pretrained({str(written)!r})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:

    out = write_report(args.run_dir, args.output)
    print(f"report: {out}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:


    return submit(args.space, args.address, args.storage, args.name, args.override, shlex.split(args.run_args), args.follow)


def cmd_osmo_validate(args: argparse.Namespace) -> int:

    problems, spec = validate_file(args.file, args.set, args.set_string)
    for line in lint_warnings(spec):
        print(f"{args.file}: warning: {line}", file=sys.stderr)
    for line in problems:
        print(f"{args.file}: {line}", file=sys.stderr)
    if problems:
        print(f"{args.file}: {len(problems)} problem(s)", file=sys.stderr)
        return 2
    groups = spec.get("groups") or [{"tasks": [t]} for t in spec.get("tasks", [])]
    print(f"{args.file}: valid ({sum(len(g['tasks']) for g in groups)} task(s) in {len(groups)} group(s))")
    return 0


def cmd_osmo_render(args: argparse.Namespace) -> int:

    values = render_values(args)
    for item in args.set:
        if "=" not in item:
            raise UserError(f"--set {item}: use KEY=VALUE")
        key, value = item.split("=", 1)
        values[key] = cast_set(value)
    if args.output:
        check_writable_file(args.output, "-o")
    text = render_workflow(values)
    problems, _ = validate_text(text, base_dir=workflow_template().parent)
    if problems:
        print(f"tune_app: error: osmo render: the rendered workflow is not valid: {problems[0]}"
              + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""), file=sys.stderr)
        return 2
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}: {args.workers} worker(s) + head; submit with: osmo workflow submit {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    from tune_app.policy import weights  # deferred: imports torch (seconds)

    path, downloaded = weights.fetch()
    print(f"ResNet-18 ImageNet weights: {path} ({'downloaded' if downloaded else 'already in the cache'})")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from tune_app.data import ensure_data  # deferred: imports torch (seconds)

    cfg = load_config(args.config, args.override)
    if not (cfg.data.bag_dir or cfg.data.lerobot_root):
        raise UserError("data prepare: the config names no data source; set data.bag_dir or data.lerobot_root "
                        "(the built-in demo data needs no preparation)")
    ensure_data(cfg)
    return 0


def cmd_data_demo(args: argparse.Namespace) -> int:

    # Without a config: default topics and joints (the original trainer's) at act_tiny's image size.
    defaults = ["conventions.image_resize=[48, 64]", "data.camera_topic=/camera/camera/color/image_raw"]
    cfg = load_config(args.config, args.override if args.config else [*defaults, *args.override])
    out = Path(args.out_dir)
    if args.video and args.format != "lerobot":
        raise UserError("data demo: --video writes a LeRobot dataset; add --format lerobot")
    if args.video and any(n % 2 for n in cfg.conventions.image_resize):
        raise UserError(f"conventions.image_resize {cfg.conventions.image_resize}: video (yuv420p) needs an even height and width")
    check_writable_dir(out, "data demo:")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"data demo: {out} is not empty; choose a new folder")
    created = not out.exists()
    try:
        return _write_demo(args, cfg, out)
    except BaseException:
        if created:                   # nothing half written: the folder this command made goes again
            shutil.rmtree(out, ignore_errors=True)
        raise


def _write_demo(args: argparse.Namespace, cfg, out: Path) -> int:
    from tune_app.data.demo import make_demo  # deferred: imports torch (seconds)

    h, w = cfg.conventions.image_resize
    eps = make_demo(_first_set(args.episodes, cfg.data.demo_episodes), cfg.data.demo_episode_len, (h, w),
                    state_dim=len(cfg.data.joint_names), num_cameras=len(cfg.data.camera_topics or [cfg.data.camera_topic]))
    if args.format == "lerobot":
        from tune_app.data.lerobot_writer import write_lerobot_dataset  # deferred: imports torch (seconds)

        write_lerobot_dataset(out, eps, cfg.data.fps, video_codec=args.video_codec if args.video else None)
        frames = f"{args.video_codec} video" if args.video else "PNG images"
        print(f"wrote a LeRobot v3 dataset ({eps.num_episodes} episodes, {eps.num_frames} frames, cameras as {frames}) to {out}; "
              f"train on it with --override data.lerobot_root={out}")
        return 0
    from tune_app.data.bagwriter import write_demo_bags  # deferred: imports torch (seconds)

    paths = write_demo_bags(out, cfg, eps, storage=args.storage, encoding=args.encoding)
    print(f"wrote {len(paths)} ROS 2 bags ({args.storage}, {args.encoding}; topics {cfg.data.joint_topic}, "
          f"{', '.join(cfg.data.camera_topics or [cfg.data.camera_topic])}) to {out}; train on them with --override data.bag_dir={out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m tune_app", description="Hyperparameter search for ACT policies on Ray Tune.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one configuration (a Ray Train TorchTrainer job)")
    p.add_argument("--config", help="training config YAML (default: built-in defaults)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="set a config key, typed as YAML (repeatable), e.g. training.lr=5e-5")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the run in training.output_dir from its last checkpoint")
    group.add_argument("--overwrite", action="store_true", help="delete the run in training.output_dir and start over")
    p.add_argument("--init-from", metavar="CHECKPOINT",
                   help="fine-tune from these weights: a tune_app checkpoint or a LeRobot ACT pretrained_model "
                        "(sets training.init_from; the model settings must match it)")
    _add_connection_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("run", help="run a sweep defined by a search-space YAML")
    p.add_argument("space", help="search-space file, e.g. search_spaces/lr_grid.yaml")
    p.add_argument("--name", help="sweep name (default: ray.name in the file, else the file name)")
    p.add_argument("--storage", help="where runs live (default: ray.storage_path, else ./runs); a path or a URI")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="set a key of every trial's base config (repeatable)")
    p.add_argument("--max-concurrent", type=_int_at_least(1), help="trials at once (default: as many as the cluster holds)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true", help="replace an existing sweep of the same name")
    group.add_argument("--resume-existing", action="store_true", help="resume the sweep of the same name if there is one "
                       "(for jobs that a scheduler may restart), else start it")
    p.add_argument("--max-failures", type=_int_at_least(-1), help="restarts of a failed trial from its last checkpoint "
                   "(default: 2 on a multi-node cluster, 0 on one node)")
    p.add_argument("--eval-best", action="store_true", help="evaluate the best checkpoint at the end (RUN_DIR/best_eval.csv/.json)")
    p.add_argument("--eval-device", default="cpu", help="device for --eval-best (default: cpu)")
    _add_connection_args(p, dashboard=True)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("resume", help="continue an interrupted sweep")
    p.add_argument("run_dir", help="the sweep's directory, e.g. runs/lr_grid")
    _add_connection_args(p, dashboard=True)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("status", help="table of a sweep's trials (during or after it)")
    p.add_argument("run_dir", help="the sweep's directory, e.g. runs/lr_grid")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("dashboard", help="serve a sweep's live dashboard (running or finished, local or in a bucket)")
    p.add_argument("run_dir", help="the sweep's directory, e.g. runs/lr_grid (or its URI)")
    p.add_argument("--port", type=_port_or_zero, default=8266, help="port (default 8266; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1; 0.0.0.0 exposes it to the network)")
    p.add_argument("--address", help="the sweep's Ray cluster (e.g. auto): adds CPU/GPU per node and links to Ray's dashboard")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("eval", help="evaluate an exported checkpoint on validation episodes (MAE per joint, L1, latency)")
    p.add_argument("checkpoint", help="a checkpoint directory (or its pretrained_model/), e.g. runs/lr_grid/best")
    p.add_argument("--data", help="config whose data section to evaluate on (default: the data the policy trained on)")
    p.add_argument("--override", action="append", default=[], metavar="data.KEY=VALUE", help="set a data key (repeatable)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (latency is measured there)")
    p.add_argument("-o", "--output", help="per-frame values, .csv or .parquet (default: CHECKPOINT/../eval/eval.csv)")
    p.add_argument("--temporal-ensemble-coeff", type=float, metavar="C",
                   help="coefficient of the ensembled column (default: the checkpoint's model.temporal_ensemble_coeff, else 0.01)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="write a checkpoint in another tool's format (LeRobot's ACT pretrained_model)")
    p.add_argument("checkpoint", help="a checkpoint directory (or its pretrained_model/), e.g. runs/lr_grid/best")
    p.add_argument("--format", choices=["lerobot"], default="lerobot", help="the target format (default: lerobot)")
    p.add_argument("-o", "--output", required=True, help="the folder to create (must not exist)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="write a self-contained HTML report of a sweep (plots, table, best trial)")
    p.add_argument("run_dir", help="the sweep's directory, e.g. runs/lr_grid")
    p.add_argument("-o", "--output", help="HTML file (default: RUN_DIR/report.html)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("submit", help="submit a sweep to a running Ray cluster through the Jobs API")
    p.add_argument("space", help="search-space file inside this checkout")
    p.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://HEAD:8265")
    p.add_argument("--storage", help="run directory root on the cluster: shared path or bucket URI (default: ray.storage_path)")
    p.add_argument("--name", help="sweep name")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="set a key of every trial's base config")
    p.add_argument("--follow", action="store_true", help="stream the job's logs until it ends; exit 0 only if it succeeded")
    p.add_argument("--run-args", default="", help="more `tune_app run` arguments as one string, e.g. '--max-concurrent 4'")
    p.set_defaults(func=cmd_submit)

    osmo = sub.add_parser("osmo", help="render or validate NVIDIA OSMO workflow files").add_subparsers(dest="osmo_command", required=True)
    p = osmo.add_parser("render", help="print a complete OSMO workflow (osmo/ray-sweep.yaml) for a sweep")
    p.add_argument("space", help="search-space file inside this checkout, e.g. search_spaces/lr_grid.yaml")
    p.add_argument("--workers", type=_int_at_least(0), required=True, help="Ray worker nodes besides the head")
    p.add_argument("--image", help="container image built from the Dockerfile")
    p.add_argument("--cpu", type=_int_at_least(1), help="CPUs per node")
    p.add_argument("--gpu", type=_int_at_least(0), help="GPUs per node")
    p.add_argument("--memory", help="memory per node, e.g. 64Gi")
    p.add_argument("--storage", help="disk per node, e.g. 100Gi")
    p.add_argument("--storage-path", dest="storage_path", help="shared run directory: s3://bucket/path or an NFS mount")
    p.add_argument("--exec-timeout", dest="exec_timeout", help="e.g. 8h")
    data_src = p.add_mutually_exclusive_group()
    data_src.add_argument("--dataset", help="the recordings as an OSMO dataset NAME[:TAG] (OSMO <= 6.3), input 0 of every task")
    data_src.add_argument("--data-url", dest="data_url", help="the recordings at a bucket URL (s3://bucket/recordings), "
                          "input 0 of every task")
    p.add_argument("--data-kind", dest="data_kind", choices=["bags", "lerobot"], default="bags",
                   help="what the input holds: ROS 2 bags (any subfolders) or a LeRobot dataset (default: bags)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="set a key of every trial's base config, as `run --override` (passed on to the head's `tune_app run`)")
    p.add_argument("--storage-credential", dest="storage_credential", metavar="NAME",
                   help="OSMO credential with access_key_id, access_key, region for a bucket --storage-path (every task)")
    p.add_argument("--storage-endpoint", dest="storage_endpoint", action="store_true",
                   help="the storage credential also holds endpoint_url (S3-compatible stores: MinIO, Ceph, ...)")
    p.add_argument("--shm-size", dest="shm_size", metavar="SIZE", help="Ray's object store per node, e.g. 8Gi (in /dev/shm)")
    p.add_argument("--no-shm", dest="shm", action="store_false", help="do not mount the node's /dev/shm into the tasks")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other default value of the workflow")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_osmo_render)
    p = osmo.add_parser("validate", help="check a workflow file offline the way the OSMO server would")
    p.add_argument("file", help="workflow YAML")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="template values (int/float/str)")
    p.add_argument("--set-string", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="template values kept as strings")
    p.set_defaults(func=cmd_osmo_validate)

    w = sub.add_parser("weights", help="pretrained backbone weights").add_subparsers(dest="weights_command", required=True)
    p = w.add_parser("fetch", help="download torchvision's ResNet-18 ImageNet weights into torch's hub cache "
                     "(from $TUNE_APP_BACKBONE_URL when set), as model.pretrained_backbone needs; nothing when present")
    p.set_defaults(func=cmd_weights_fetch)

    data = sub.add_parser("data", help="prepare a data source, or write the demo data as bags").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("prepare", help="decode a config's bags/LeRobot dataset into this node's cache")
    p.add_argument("config", help="training config YAML naming data.bag_dir or data.lerobot_root")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="set a config key (repeatable)")
    p.set_defaults(func=cmd_data_prepare)
    p = data.add_parser("demo", help="write the built-in demo episodes as ROS 2 bags (or a LeRobot dataset)")
    p.add_argument("out_dir", help="new folder for the recordings")
    p.add_argument("--config", default=None, help="config whose topics, joints, fps and image size to use "
                   "(default: as configs/act_tiny.yaml: the original joint topic and names, "
                   "/camera/camera/color/image_raw, images 48x64)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="set a config key (repeatable)")
    p.add_argument("--episodes", type=_int_at_least(1), help="number of episodes (default: data.demo_episodes)")
    p.add_argument("--storage", choices=["sqlite3", "mcap"], default="sqlite3")
    p.add_argument("--encoding", choices=["rgb8", "bgr8", "mono8", "16UC1", "32FC1", "png", "jpeg"], default="rgb8",
                   help="camera message encoding (png/jpeg: sensor_msgs/CompressedImage)")
    p.add_argument("--format", choices=["rosbag", "lerobot"], default="rosbag")
    p.add_argument("--video", action="store_true", help="LeRobot format: cameras as MP4 video (as LeRobot records), not PNG")
    p.add_argument("--video-codec", choices=["av1", "h264", "hevc"], default="av1", help="with --video (default: av1, LeRobot's)")
    p.set_defaults(func=cmd_data_demo)
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (and exit code 2), like every other user mistake."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("tune_app: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one error path: user mistakes become one line, bugs keep their traceback
        user = as_user_error(exc)
        if user is None:
            raise
        print(f"tune_app: error: {mask_secrets(str(user))}", file=sys.stderr)
        return UserError.exit_code
