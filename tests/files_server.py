"""A small HTTP file server on 127.0.0.1 for tests (stands in for download.pytorch.org or a mirror).

It serves the files of one folder, counts the GETs per path and can answer slowly (to make
concurrent downloads overlap). ``start`` checks that the server answering on its port is this one,
through a token only it knows (a busy machine can hand the port to someone else).
"""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FilesServer:
    def __init__(self, folder: Path, delay_s: float = 0.0):
        self.folder, self.delay_s = Path(folder), delay_s
        self.gets: Counter[str] = Counter()
        self.token = uuid.uuid4().hex
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(server.folder), **kwargs)

            def do_GET(self):
                if self.path == f"/whoami-{server.token}":
                    body = server.token.encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                server.gets[self.path] += 1
                time.sleep(server.delay_s)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/whoami-{self.token}", timeout=10) as r:
            assert r.read().decode() == self.token, "another process answers on the test server's port"

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
