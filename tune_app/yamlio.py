"""YAML reading and writing with the typing a user expects.

PyYAML follows YAML 1.1, where ``5e-5`` (no dot) is a *string*. Every learning rate in a sweep
file is written that way, so the loader here adds the YAML 1.2 float form. The same loader types
``--override`` values, so ``training.lr=5e-5`` and ``lr: 5e-5`` in a file mean the same thing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tune_app.errors import UserError, os_error_message


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_scalar(text: str) -> Any:
    """Type one value as YAML would (``true``, ``5e-5``, ``100``, ``null``, ``[a,b]``, ``{k: v}``)."""
    if text.strip() == "":
        return ""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        # A bare string that is not valid YAML (``a: b: c``) is taken literally.
        return text


def read_text(path: str | Path, what: str = "file") -> str:
    """A text file's content; missing, unreadable or not UTF-8 is a :class:`UserError` naming it."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give the {what} itself")
    if not path.is_file():
        raise UserError(f"{path}: {what} not found (check the path)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file; give the {what} as text") from None
    except OSError as exc:
        raise UserError(os_error_message(exc, str(path))) from None


def load_yaml(path: str | Path, what: str = "file") -> dict:
    """Read a YAML mapping; a missing file, bad syntax or a non-mapping is a :class:`UserError`."""
    path = Path(path)
    text = read_text(path, what)
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"{path}:{where}: invalid YAML: {problem}") from None
    except RecursionError:
        raise UserError(f"{path}: invalid YAML: nested too deeply") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


def dump_yaml(data: dict, path: str | Path) -> None:
    """Write a mapping as block-style YAML, keys in their given order, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    tmp.replace(path)
