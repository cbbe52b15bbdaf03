"""ImageNet ResNet-18 weights for ``model.pretrained_backbone``: a local file, else one download per node.

As the original trainer (torchvision's ``ResNet18_Weights.IMAGENET1K_V1``) did, the weights come from
torchvision's URL into torch's hub cache (``$TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth``), through
``torch.hub.load_state_dict_from_url`` with the hash check on: the file name carries the first hex digits
of the file's SHA-256, and a download that does not match is refused and removed.

* ``model.backbone_weights`` names a local file instead (``.pth`` or ``.safetensors``); nothing is fetched.
* ``TUNE_APP_BACKBONE_URL`` replaces the URL (a mirror, an air-gapped cluster's file server). Its file
  name must carry the hash the same way (``resnet18-<first 8+ hex of sha256>.pth``), else the download
  could not be checked and is refused.
* Concurrent trials on a node do not race: the download runs under a file lock beside the target, and
  whoever waited finds the finished file.
* ``python -m tune_app weights fetch`` prefetches (the Dockerfile bakes the file into the image); ``run``
  and ``train`` fetch before Ray starts, so a missing network is one line, exit 2, before anything runs.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import urllib.error
from pathlib import Path
from urllib.parse import urlparse

from tune_app.checks import check_writable_dir
from tune_app.errors import UserError

TORCHVISION_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
URL_ENV = "TUNE_APP_BACKBONE_URL"
HASHED_NAME = re.compile(r"^[\w.]+-([0-9a-f]{8,64})\.(pth|pt)$")
DOWNLOAD_TIMEOUT_S = 60


def weights_url() -> str:
    return os.environ.get(URL_ENV) or TORCHVISION_URL


def hub_checkpoints() -> Path:
    """torch's hub cache (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def file_name(url: str) -> str:
    name = os.path.basename(urlparse(url).path)
    if not HASHED_NAME.match(name):
        source = URL_ENV if os.environ.get(URL_ENV) else "the weights URL"
        raise UserError(f"{source} {url}: the file name '{name}' carries no SHA-256 prefix, so the download could not be "
                        "checked; name the file as torchvision does, resnet18-<first 8 hex digits of its sha256>.pth")
    return name


def cached_path(url: str | None = None) -> Path:
    url = url or weights_url()
    return hub_checkpoints() / file_name(url)


def local_weights(configured: str | None) -> Path:
    """The weights file to load: ``model.backbone_weights`` when set, else the hub cache's copy,
    downloaded first when this node has none (:func:`fetch`)."""
    if configured:
        path = Path(configured)
        if not path.is_file():
            raise UserError(f"model.backbone_weights: {path} does not exist; point it at a ResNet-18 .pth/.safetensors file, "
                            f"or remove the key to use torchvision's ImageNet weights ({TORCHVISION_URL})")
        return path
    return fetch()[0]


def fetch(url: str | None = None) -> tuple[Path, bool]:
    """Make sure the hub cache holds the weights; ``(path, downloaded)``."""
    url = url or weights_url()
    target = cached_path(url)
    if target.is_file():
        return target, False
    check_writable_dir(target.parent, "torch's hub cache ($TORCH_HOME/hub/checkpoints)")
    made = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    lock = FileLock(str(target) + ".lock")
    with lock:
        try:
            if target.is_file():                   # another process on this node finished it meanwhile
                return target, False
            _download(url, target)                 # torch.hub says "Downloading: URL to PATH"
        except BaseException:
            _remove_made(made)
            raise
        finally:
            Path(lock.lock_file).unlink(missing_ok=True)
    return target, True


def _remove_made(folders: list[Path]) -> None:
    """After a failed download: the folders this call made, if still empty (innermost first)."""
    for folder in folders:
        for leftover in folder.glob("*.lock"):
            leftover.unlink(missing_ok=True)
        try:
            folder.rmdir()
        except OSError:
            return


def _download(url: str, target: Path) -> None:
    import torch.hub

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)        # torch.hub's urlopen has no timeout of its own
    try:
        torch.hub.load_state_dict_from_url(url, model_dir=str(target.parent), map_location="cpu", progress=sys.stderr.isatty(),
                                           check_hash=True, file_name=target.name, weights_only=True)
    except RuntimeError as exc:
        if "invalid hash value" not in str(exc):
            raise UserError(f"{target}: downloaded from {url} but not readable as weights ({str(exc).splitlines()[0][:160]}); "
                            "check the URL") from None
        raise UserError(f"{url}: refused: the file's SHA-256 does not start with '{HASHED_NAME.match(target.name)[1]}' as its "
                        f"name says ({str(exc).splitlines()[0][:120]}); nothing was kept; check the file on the mirror") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UserError(f"model.pretrained_backbone: cannot download the ResNet-18 ImageNet weights from {url} ({reason}); "
                        f"without internet, copy {target.name} to {target} (`python -m tune_app weights fetch` where there is), "
                        f"or set model.backbone_weights to a local file, {URL_ENV} to a mirror, or model.pretrained_backbone=false"
                        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def prefetch(configs: list) -> None:
    """Before Ray starts: every config that wants pretrained weights has them on this node."""
    for cfg in configs:
        if cfg.model.pretrained_backbone:
            if cfg.model.backbone_weights:
                local_weights(cfg.model.backbone_weights)
            else:
                fetch()
