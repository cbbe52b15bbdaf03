"""A headless Chromium driven over the DevTools protocol (a websocket, through aiohttp): open a page,
evaluate JavaScript in it as it lives on (no reloads), take screenshots."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path


class Browser:
    def __init__(self, chromium: str, url: str, size: tuple[int, int] = (1280, 800)):
        self.profile = Path(tempfile.mkdtemp(prefix="tune_app_chromium_"))
        self.proc = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
                                      f"--user-data-dir={self.profile}", f"--window-size={size[0]},{size[1]}",
                                      "--hide-scrollbars", url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert self.proc.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.ws_url = pages[0]["webSocketDebuggerUrl"]
        self._ids = itertools.count(1)
        self.wait_until("document.readyState === 'complete' && location.href.startsWith('http')", deadline - time.monotonic())

    def wait_until(self, expression: str, timeout_s: float = 60) -> None:
        """Poll until a JavaScript expression is true. Errors count as not yet: while the page navigates, the
        document may have no body, or the context evaluated in is replaced by the page's own."""
        deadline = time.monotonic() + max(timeout_s, 5)
        while True:
            try:
                if self.eval(expression):
                    return
            except AssertionError:
                pass
            assert time.monotonic() < deadline, f"the page never made `{expression}` true"
            time.sleep(0.3)

    async def _call(self, method: str, params: dict) -> dict:
        import aiohttp

        async with aiohttp.ClientSession() as session, session.ws_connect(self.ws_url, max_msg_size=0) as ws:
            call_id = next(self._ids)
            await ws.send_json({"id": call_id, "method": method, "params": params})
            async for msg in ws:
                reply = json.loads(msg.data)
                if reply.get("id") == call_id:
                    assert "error" not in reply, reply
                    return reply["result"]
        raise AssertionError(f"no reply to {method}")

    def call(self, method: str, params: dict | None = None) -> dict:
        return asyncio.run(self._call(method, params or {}))

    def eval(self, expression: str):
        """The value of a JavaScript expression in the page (JSON-serialisable)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"]))
        return path

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)
