"""Ray's worker output as the driver prints it, less one known piece of shutdown noise.

When a worker process is stopped (Tune's ``ray.kill`` of a finished trial's process, the cluster's
shutdown), the raylet sends it SIGTERM and Ray's handler raises ``SystemExit`` in whatever Python
code the process's main thread runs at that moment. When that is a weakref callback, Python prints
"Exception ignored in: <function WeakSet...>" with a traceback ending in ``SystemExit``, and Ray
forwards it to the driver: a traceback in a sweep that went well. :class:`WorkerOutputFilter` wraps
the driver's stderr and drops exactly such a block (one worker's "Exception ignored in:" lines up to
its ``SystemExit`` line, with Ray's ``sigterm_handler`` in between); everything else passes
unchanged, and a block that does not end that way is printed as it came.
"""

from __future__ import annotations

import re
import sys

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PREFIX = re.compile(r"^\((?:[^()]* )?pid=(\w+)(?:, ip=[^)]*)?\) ?(.*)$")
_MAX_BLOCK = 60


class WorkerOutputFilter:
    def __init__(self, stream):
        self._stream = stream
        self._partial = ""
        self._held: dict[str, list[str]] = {}          # pid -> lines of an open "Exception ignored" block

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._line(line + "\n")
        return len(text)

    def _line(self, line: str) -> None:
        m = _PREFIX.match(_ANSI.sub("", line))
        if not m:
            self._stream.write(line)
            return
        pid, message = m.groups()
        block = self._held.get(pid)
        if block is None:
            if message.startswith("Exception ignored in:"):
                self._held[pid] = [line]
            else:
                self._stream.write(line)
            return
        block.append(line)
        if message.startswith("SystemExit"):
            del self._held[pid]
            if not any("sigterm_handler" in held for held in block):
                self._stream.write("".join(block))
        elif len(block) > _MAX_BLOCK:
            del self._held[pid]
            self._stream.write("".join(block))

    def flush(self) -> None:
        for block in self._held.values():
            self._stream.write("".join(block))
        self._held.clear()
        if self._partial:
            self._stream.write(self._partial)
            self._partial = ""
        self._stream.flush()

    def __getattr__(self, name):                       # fileno, isatty, encoding, ... of the real stream
        return getattr(self._stream, name)


def install() -> None:
    if not isinstance(sys.stderr, WorkerOutputFilter):
        sys.stderr = WorkerOutputFilter(sys.stderr)


def uninstall() -> None:
    if isinstance(sys.stderr, WorkerOutputFilter):
        sys.stderr.flush()
        sys.stderr = sys.stderr._stream
