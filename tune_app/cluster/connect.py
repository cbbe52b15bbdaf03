"""Connecting to Ray: an existing cluster (``--address`` / ``RAY_ADDRESS``) or an embedded local one.

Environment knobs that Ray reads in its actors must be set before ``ray.init`` (actors inherit the
raylet's environment), so :func:`ray_env_defaults` is applied first. Each is a default: a value
already in the environment wins.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tune_app.checks import is_uri
from tune_app.cluster import ray_output
from tune_app.errors import UserError

# Why each default (see ray-notes.md):
RAY_ENV_DEFAULTS = {
    # Train's controller polls workers this often; the 2 s default caps reports at one per 2 s.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    # A worker group that cannot be placed fails in a minute rather than retrying forever.
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "60",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    # Fewer, shorter progress lines from Tune.
    "RAY_AIR_NEW_OUTPUT": "1",
    # Train's print patch sends each print of rank 0 through a logger and to stdout: printed twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # How long Tune waits for a reused trial process's previous trial to end (2 s by default); a
    # stopped fast-mode run ends at its workers' next step within it and keeps them warm
    # (tune_app/fastpath/graceful_stop.py), so a DDP run or a slow step gets more than 2 s.
    "TUNE_FUNCTION_THREAD_TIMEOUT_S": "10",
}


LOCAL_ENV_DEFAULTS = {
    # The preemption watcher is one more actor process per trial; nothing preempts a local machine.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


def ray_env_defaults(local: bool) -> None:
    for key, value in {**RAY_ENV_DEFAULTS, **(LOCAL_ENV_DEFAULTS if local else {})}.items():
        os.environ.setdefault(key, value)


_PROCESS_TOKEN: str | None = None


def _local_auth() -> None:
    """Token authentication for an embedded cluster, with a token of this process's own.

    Ray 2.60 binds its gRPC ports (GCS, raylet, workers) on every interface, whatever the node
    address, so "local only" cannot come from binding: it comes from the token. The token is
    random per process, lives only in this process's environment (Ray's processes inherit it) and
    is never written to ~/.ray. RAY_AUTH_MODE stays unset, so ``ray.init`` itself turns token mode
    on (and refreshes its cached config) through its public path. A user who set RAY_AUTH_MODE
    (or their own RAY_AUTH_TOKEN) keeps their choice.
    """
    global _PROCESS_TOKEN
    if "RAY_AUTH_MODE" in os.environ or "RAY_AUTH_TOKEN" in os.environ:
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
            print("tune_app: warning: RAY_AUTH_MODE=disabled: anyone who can reach this machine can join the embedded "
                  "Ray cluster and run code; unset it to use token authentication", file=sys.stderr, flush=True)
        return
    # Ray's loader caches the first token it reads in a process, so every cluster of this process uses one token.
    _PROCESS_TOKEN = _PROCESS_TOKEN or secrets.token_hex(32)
    _set_owned_env("RAY_AUTH_TOKEN", _PROCESS_TOKEN)
    _OWNED_ENV.setdefault("RAY_AUTH_MODE", None)          # ray.init sets it to "token"; restored at shutdown
    from tune_app import fastpath  # deferred: imports Ray, needed only when starting one

    fastpath.quiet_auth_notice()


def token_file() -> Path | None:
    """The embedded cluster's token in a file only this user can read (for the dashboard's login
    prompt); None when this process did not make the token. Removed at :func:`shutdown`."""
    global _TOKEN_DIR
    if _PROCESS_TOKEN is None or os.environ.get("RAY_AUTH_TOKEN") != _PROCESS_TOKEN:
        return None
    if _TOKEN_DIR is None:
        _TOKEN_DIR = Path(tempfile.mkdtemp(prefix="tune_app_ray_"))     # mode 0700
        fd = os.open(_TOKEN_DIR / "auth_token", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(_PROCESS_TOKEN)
    return _TOKEN_DIR / "auth_token"


_TOKEN_DIR: Path | None = None


@dataclass
class Connection:
    address: str | None          # None for an embedded cluster
    dashboard_url: str | None
    num_cpus: float
    num_gpus: float

    @property
    def local(self) -> bool:
        return self.address is None


def connect(address: str | None = None, num_cpus: int | None = None, dashboard: bool = True,
            dashboard_host: str = "127.0.0.1", dashboard_port: int | None = None,
            log_to_driver: bool = True) -> Connection:
    """Join ``address`` (or ``RAY_ADDRESS``), else start an embedded local Ray on 127.0.0.1.

    The embedded cluster keeps its dashboard: Ray Train's placement-group cleaner needs the State
    API it serves, or an early-stopped trial leaks its workers' resources (ray-notes.md §3).
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    ray_env_defaults(local=address is None)
    import ray

    ray_output.install()

    if ray.is_initialized():
        ctx = None
    elif address:
        try:
            ctx = ray.init(address=address, log_to_driver=log_to_driver)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(f"--address {address}: cannot connect to a Ray cluster ({exc}); check the address or omit it for a local Ray") from None
    else:
        _local_auth()
        # Actors that use the State API without an address (Ray Train's placement-group cleaner)
        # otherwise look for "the" local cluster and fail when a second one runs on this machine;
        # the cleaner then never frees an early-stopped trial's CPUs and the sweep stalls. Pin the
        # dashboard port and tell every process of this cluster (they inherit the env) where it is.
        # Always this cluster's own: a value inherited from a parent process that runs another
        # embedded Ray points the cleaner at the wrong cluster, where our controller is unknown,
        # so it "cleans up" the placement group of a live run and kills its workers.
        dashboard_port = dashboard_port or (_free_port(dashboard_host) if dashboard else None)
        if dashboard:
            state_host = "127.0.0.1" if dashboard_host in ("0.0.0.0", "::", "") else dashboard_host
            _set_owned_env("RAY_API_SERVER_ADDRESS", f"http://{state_host}:{dashboard_port}")
        kwargs = dict(num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host=dashboard_host,
                      log_to_driver=log_to_driver, object_store_memory=200 << 20)
        if dashboard_port:
            kwargs["dashboard_port"] = dashboard_port
        ctx = ray.init(**kwargs)
    resources = ray.cluster_resources()
    url = getattr(ctx, "dashboard_url", None) if ctx is not None else None
    if url and not url.startswith("http"):
        url = f"http://{url}"
    return Connection(address=address, dashboard_url=url or None,
                      num_cpus=resources.get("CPU", 0.0), num_gpus=resources.get("GPU", 0.0))


_OWNED_ENV: dict[str, str | None] = {}      # variables connect() set -> the value they had before


def _set_owned_env(key: str, value: str) -> None:
    _OWNED_ENV.setdefault(key, os.environ.get(key))
    os.environ[key] = value


def refresh(conn: Connection) -> Connection:
    """``conn`` with the cluster's current CPU/GPU totals (after more nodes joined)."""
    import ray

    resources = ray.cluster_resources()
    return Connection(conn.address, conn.dashboard_url, resources.get("CPU", 0.0), resources.get("GPU", 0.0))


def port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str, preferred: int = 8265) -> int:
    """The dashboard's usual port when it is free, else any free port."""
    import socket

    if port_free(host, preferred):
        return preferred
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_nodes(count: int, timeout_s: float = 300.0, poll_s: float = 1.0) -> int:
    """Block until ``count`` nodes are alive; a :class:`UserError` when they do not come in time."""
    import ray

    deadline = time.monotonic() + timeout_s
    print(f"waiting for {count} Ray node(s) ...", flush=True)
    while True:
        alive = sum(1 for n in ray.nodes() if n.get("Alive"))
        if alive >= count:
            return alive
        if time.monotonic() > deadline:
            raise UserError(f"--wait-nodes {count}: only {alive} Ray node(s) alive after {timeout_s:.0f} s; "
                            "check that the worker nodes could join the head, or raise --wait-timeout")
        time.sleep(poll_s)


def alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def check_shared_storage(storage: str, timeout_s: float = 60.0) -> None:
    """Refuse a run directory that the cluster's nodes do not all see.

    Trials on other nodes write checkpoints into the run directory and resume from it, so on a
    multi-node cluster it must be shared storage (NFS, a bucket URI). A URI is taken as shared. A
    local path is checked, not guessed: a marker file is written here and a task pinned to every
    alive node looks for it.
    """
    if is_uri(storage) and not storage.startswith("file://"):
        return
    nodes = alive_nodes()
    if len(nodes) <= 1:
        return
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    root = Path(storage.removeprefix("file://"))
    root.mkdir(parents=True, exist_ok=True)
    marker = root / f".tune_app_shared_{uuid.uuid4().hex[:10]}"
    marker.write_text("x")
    try:
        probe = ray.remote(num_cpus=0)(_path_exists)
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(str(marker))
                for n in nodes]
        seen = ray.get(refs, timeout=timeout_s)
    finally:
        marker.unlink(missing_ok=True)
    missing = [n.get("NodeManagerAddress", n["NodeID"][:8]) for n, ok in zip(nodes, seen, strict=True) if not ok]
    if missing:
        raise UserError(f"storage path {root} is local to this node: node(s) {', '.join(missing)} of the {len(nodes)}-node "
                        "cluster cannot see it, and trials there could not write or resume checkpoints. Use shared "
                        "storage: --storage /an/nfs/mount or a bucket URI (s3://bucket/path, gs://...)")


def _path_exists(path: str) -> bool:
    import os.path

    return os.path.exists(path)


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray_output.uninstall()
    for key, before in _OWNED_ENV.items():
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before
    _OWNED_ENV.clear()
    global _TOKEN_DIR
    if _TOKEN_DIR is not None:
        shutil.rmtree(_TOKEN_DIR, ignore_errors=True)
        _TOKEN_DIR = None
