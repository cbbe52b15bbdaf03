"""``python -m tune_app dashboard RUN_DIR``: the sweep's page, served live while the sweep runs.

The page is the report's (one template, one drawing code), fed by the server: ``/`` serves it with the
data of the moment and ``/api/sweep`` returns fresh data, which the page polls every few seconds and
redraws from, without reloading. ``/api/status`` is exactly ``status --json``. Everything is read from
the run directory (local or a bucket), so a running sweep, a finished one and one whose driver died
all work. Served with aiohttp (a dependency of ``ray[default]``); read-only: GET routes only, no
action to authorise. It binds 127.0.0.1 unless ``--host`` says otherwise.

When this process is connected to the sweep's Ray cluster (``run --dashboard``, or ``--address``),
the page also shows CPU and GPU in use per node with the trials running there (Ray's state API), and
each trial row links to its actor (with its logs) in Ray's dashboard.
"""

from __future__ import annotations

import asyncio
import html
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tune_app.errors import UserError
from tune_app.inspection.report import render_html, report_data, to_json
from tune_app.sweep.results import load_run
from tune_app.sweep.rundir import SWEEP_FILE, RunDir

DEFAULT_PORT = 8266

WAITING_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
<title>tune_app sweep: waiting</title></head><body style="font: 14px system-ui, sans-serif; margin: 24px">
<p>Waiting for the sweep in <code>{where}</code> to start; this page reloads by itself.</p></body></html>"""


class ClusterView:
    """CPU/GPU in use per node and the Ray-dashboard link of each trial's actor, from Ray's public APIs;
    refreshed at most every ``ttl_s`` (the state API is a round trip to the dashboard)."""

    def __init__(self, ray_dashboard: str | None, ttl_s: float = 5.0):
        if ray_dashboard and "://" not in ray_dashboard:
            ray_dashboard = f"http://{ray_dashboard}"
        self.ray_dashboard, self.ttl_s = ray_dashboard, ttl_s
        self._at, self._cached = 0.0, None

    def snapshot(self) -> dict[str, Any]:
        if time.monotonic() - self._at > self.ttl_s:
            try:
                self._cached = self._read()
            except Exception as exc:  # noqa: BLE001 - the page says what failed instead of the server dying
                self._cached = {"error": f"cluster state unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})",
                                "nodes": [], "actors_by_pid": {}}
            self._at = time.monotonic()
        return self._cached

    @staticmethod
    def _read() -> dict[str, Any]:
        import ray
        from ray.util.state import list_actors, list_placement_groups

        nodes = {n["NodeID"]: {"id": n["NodeID"], "ip": n["NodeManagerAddress"], "cpu_total": n["Resources"].get("CPU", 0.0),
                               "gpu_total": n["Resources"].get("GPU", 0.0), "cpu_used": 0.0, "gpu_used": 0.0, "trials": [],
                               "head": "node:__internal_head__" in n["Resources"]}
                 for n in ray.nodes() if n.get("Alive")}
        for pg in list_placement_groups(filters=[("state", "=", "CREATED")], detail=True, limit=10_000, raise_on_missing_output=False):
            for bundle in pg.bundles or []:
                node = nodes.get(bundle.get("node_id"))
                if node:
                    node["cpu_used"] += bundle.get("unit_resources", {}).get("CPU", 0.0)
                    node["gpu_used"] += bundle.get("unit_resources", {}).get("GPU", 0.0)
        actors = list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=10_000, raise_on_missing_output=False)
        for actor in actors:
            node = nodes.get(actor.node_id)
            if node and not actor.placement_group_id:          # actors in a placement group use its bundles
                node["cpu_used"] += (actor.required_resources or {}).get("CPU", 0.0)
                node["gpu_used"] += (actor.required_resources or {}).get("GPU", 0.0)
        by_pid = {(a.node_id, a.pid): a.actor_id for a in actors}
        return {"nodes": sorted(nodes.values(), key=lambda n: (not n["head"], n["ip"])), "actors_by_pid": by_pid,
                "ip_to_node": {n["ip"]: n["id"] for n in nodes.values()}}


class DashboardServer:
    """The dashboard of ``run_dir`` on ``host:port`` (port 0: any free one), in a thread of its own."""

    def __init__(self, run_dir: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT, interval_s: float | None = None,
                 cluster: ClusterView | None = None):
        self.run_dir, self.host, self.port = str(run_dir), host, port
        self.remote = RunDir(run_dir).remote
        self.interval_s = interval_s or (10.0 if self.remote else 2.0)     # a bucket is copied at every read
        self.cluster = cluster
        self._mirror = Path(tempfile.mkdtemp(prefix="tune_app_dashboard_")) if self.remote else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner = None
        self._thread: threading.Thread | None = None

    # ---- data (blocking; run in the executor)

    def _started(self) -> bool:
        return RunDir(self.run_dir).exists(SWEEP_FILE)

    def status(self) -> dict[str, Any]:
        return load_run(self.run_dir, mirror_dir=self._mirror).summary()

    def data(self) -> dict[str, Any]:
        run = load_run(self.run_dir, mirror_dir=self._mirror)
        data = report_data(self.run_dir, run)
        data["live"] = {"endpoint": "api/sweep", "interval_ms": int(self.interval_s * 1000)}
        if self.cluster is not None:
            view = self.cluster.snapshot()
            nodes = [{**n, "trials": []} for n in view["nodes"]]
            data["ray_dashboard"] = self.cluster.ray_dashboard
            data["cluster"] = {"nodes": nodes, "error": view.get("error")}
            by_ip = {n["ip"]: n for n in nodes}
            for row in data["trials"]:
                if row["state"] == "RUNNING" and row.get("node") in by_ip:
                    by_ip[row["node"]]["trials"].append(row["trial_id"])
                actor = view.get("actors_by_pid", {}).get((view.get("ip_to_node", {}).get(row.get("node")), row.get("pid")))
                if actor and self.cluster.ray_dashboard:
                    row["logs_url"] = f"{self.cluster.ray_dashboard.rstrip('/')}/#/actors/{actor}"
        return data

    # ---- HTTP

    def _app(self):
        from aiohttp import web

        async def blocking(fn):
            return await asyncio.get_running_loop().run_in_executor(None, fn)

        async def index(request):
            if not await blocking(self._started):
                return web.Response(text=WAITING_PAGE.format(where=html.escape(self.run_dir)), content_type="text/html")
            try:
                return web.Response(text=render_html(await blocking(self.data)), content_type="text/html")
            except UserError as err:
                return web.Response(status=503, text=str(err))

        def api(fn):
            async def handler(request):
                try:
                    return web.Response(text=to_json(await blocking(fn)), content_type="application/json",
                                        headers={"Cache-Control": "no-store"})
                except UserError as err:
                    return web.json_response({"error": str(err)}, status=503)
            return handler

        app = web.Application()
        app.router.add_get("/", index)
        app.router.add_get("/api/sweep", api(self.data))
        app.router.add_get("/api/status", api(self.status))
        return app

    def start(self) -> str:
        """Serve in a background thread; returns the URL (the actual port when ``port`` was 0)."""
        from aiohttp import web

        ready = threading.Event()
        failure: list[BaseException] = []

        async def serve():
            self._runner = web.AppRunner(self._app(), access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port)
            await site.start()
            self.port = self._runner.addresses[0][1]

        def run():
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(serve())
            except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="tune_app-dashboard", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise UserError(f"dashboard: cannot listen on {self.host}:{self.port} ({failure[0]}); choose another --port") from None
        return self.url

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def stop(self) -> None:
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if self._mirror is not None:
            shutil.rmtree(self._mirror, ignore_errors=True)
