"""The one exception type for user mistakes, the one secret masker, and the one error path.

Anything a user can fix (a bad YAML key, a missing data directory, a search space with an empty
value list, an unwritable folder, a full disk) raises :class:`UserError`. The CLI catches it once,
prints its message as a single line with every secret masked, and exits with code 2; a traceback
means a bug in tune_app, not in the user's input.

:func:`as_user_error` is the mapping the CLI applies to everything else it catches: OS errors
(naming the file), undecodable text, YAML/JSON/safetensors errors, and a :class:`UserError` that
Ray carries back from a worker or a trial inside its own exception types.
"""

from __future__ import annotations

import difflib
import errno
import os
import re

# Environment variables whose values are secrets: masked in every message tune_app prints.
SECRET_ENV = ("WANDB_API_KEY", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD", "AWS_SECRET_ACCESS_KEY",
              "AWS_SESSION_TOKEN", "RAY_AUTH_TOKEN", "HF_TOKEN")
# user:password@ in a URI: the one pattern both for masking and for moving credentials out of a URI.
_URI_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<password>[^@/\s]+)@")


class UserError(Exception):
    """A mistake in the user's input; the message says what is wrong and how to fix it."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: a multi-line message would break the "one clear line" contract.
        super().__init__(" ".join(str(message).split()))


def mask_secrets(text: str | None) -> str | None:
    """``text`` with passwords in URIs (``https://user:***@host``) and secret env values masked."""
    if not text:
        return text
    text = _URI_CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)
    for key in SECRET_ENV:
        value = os.environ.get(key)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def did_you_mean(word: str, options: list[str], list_options: bool = False) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``options``; for dotted keys also by their last part
    (``training.learning_rate`` -> ``training.lr``). Without a close one: the options when
    ``list_options``, else nothing. The one suggestion helper for every "unknown name" message."""
    near = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    if not near and "." in word:
        by_leaf = {o.rsplit(".", 1)[-1]: o for o in options}
        near = [by_leaf[m] for m in difflib.get_close_matches(word.rsplit(".", 1)[-1], list(by_leaf), n=1, cutoff=0.5)]
    if near:
        return f" (did you mean '{near[0]}'?)"
    return f" (valid: {', '.join(options)})" if list_options else ""


def split_uri_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``https://user:pw@host/x`` -> ``("https://host/x", "user", "pw")``; a URI without them is returned as is."""
    m = _URI_CREDENTIALS.match(uri)
    if not m:
        return uri, None, None
    return m["scheme"] + uri[m.end():], m["user"], m["password"]


_ERRNO_HINTS = {
    errno.ENOSPC: "no space left on the device; free some space or choose a folder on another disk",
    errno.EDQUOT: "disk quota exceeded; free some space or choose a folder on another disk",
    errno.EACCES: "permission denied; choose a folder you can write to or fix its permissions",
    errno.EPERM: "operation not permitted; choose a folder you can write to or fix its permissions",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.ENOENT: "no such file or directory; check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "is a folder, not a file; give a file path",
    errno.EEXIST: "already exists; choose a new path",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
}


def os_error_message(exc: OSError, what: str | None = None) -> str:
    """One line for an OS error: the file it concerns, what went wrong, and the fix."""
    where = what or exc.filename or exc.filename2
    hint = _ERRNO_HINTS.get(exc.errno or -1) or (exc.strerror or str(exc) or type(exc).__name__)
    return f"{where}: {hint}" if where else hint


def find_user_error(exc: BaseException | None) -> UserError | None:
    """A :class:`UserError` inside ``exc``: its cause/context chain, Ray's wrappers (``cause``), and
    Ray Train's per-worker failures (``WorkerGroupError.worker_failures``)."""
    stack, seen = [exc], set()
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, UserError):
            return item
        failures = getattr(item, "worker_failures", None)
        if isinstance(failures, dict):
            stack.extend(failures.values())
        stack.extend([getattr(item, "cause", None), item.__cause__, item.__context__])
    return None


def as_user_error(exc: BaseException) -> UserError | None:
    """The :class:`UserError` to show for ``exc``, or None when it is a bug (let the traceback show)."""
    if (found := find_user_error(exc)) is not None:
        return found
    if isinstance(exc, OSError) and not isinstance(exc, (ConnectionError, TimeoutError)) and exc.errno is not None:
        return UserError(os_error_message(exc))
    if isinstance(exc, UnicodeDecodeError):
        return UserError(f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}); give a text (YAML/JSON) file")
    if isinstance(exc, MemoryError):
        return UserError("out of memory; lower training.batch_size, the image size or data.demo_episodes")
    return None
