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

import shutil
from pathlib import Path


class RunDir:
    def __init__(self, location: str | Path, fs=None):
        text = str(location)
        self.remote = fs is not None or "://" in text
        if self.remote:
            self.uri = text.rstrip("/")
            if fs is None or "://" in self.uri:
                fs_of_uri, self._root = _split(self.uri) if "://" in self.uri else (None, self.uri)
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
        import pyarrow.fs

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
        if not self.remote:
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
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


def _split(uri: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)
