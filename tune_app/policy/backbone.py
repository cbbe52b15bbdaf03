"""A native ResNet-18 trunk (no torchvision), with torchvision-compatible parameter names.

The trunk is conv1/bn1/relu/maxpool/layer1..layer4 (no avgpool, no fc): a 512-channel map at
stride 32. Its BatchNorm is frozen (``FrozenBatchNorm2d``: the statistics and affine terms are
buffers), as in DETR, the ACT paper and LeRobot: small robot batches would make batch statistics
noisy, and a frozen norm is the same per sample, so cameras can share one backbone call. Parameter
names match ``torchvision.models.resnet18().state_dict()`` so ImageNet weights saved by torchvision
(``resnet18-f37072fd.pth``) or converted to safetensors load directly. Weights are read from a local
file; :mod:`tune_app.policy.weights` puts torchvision's there first.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from tune_app.errors import UserError
from tune_app.policy.weights import local_weights


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine terms (torchvision.ops.FrozenBatchNorm2d's buffers and maths)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        for name, fill in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            self.register_buffer(name, torch.full((channels,), fill))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)        # present in a BatchNorm2d's weights
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, shift)`` with ``bn(x) == x * scale + shift`` per channel."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.affine()
        return x * scale[None, :, None, None].to(x.dtype) + shift[None, :, None, None].to(x.dtype)


def conv_bn(conv: nn.Conv2d, bn: FrozenBatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``bn(conv(x))`` as one convolution: the frozen norm folded into the kernel and a bias. The same maths,
    without two passes over the activation map (half the backbone's elementwise time at 480x848)."""
    scale, shift = bn.affine()
    weight = conv.weight * scale[:, None, None, None].to(conv.weight.dtype)
    return F.conv2d(x, weight, shift.to(x.dtype), conv.stride, conv.padding, conv.dilation, conv.groups)


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = FrozenBatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), FrozenBatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else conv_bn(self.downsample[0], self.downsample[1], x)
        out = self.relu(conv_bn(self.conv1, self.bn1, x))
        out = conv_bn(self.conv2, self.bn2, out)
        return self.relu(out + identity)


class ResNet18Trunk(nn.Module):
    """ResNet-18 up to ``layer4``: (B, 3, H, W) -> (B, 512, ceil(H/32), ceil(W/32))."""

    out_channels = 512

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = FrozenBatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(conv_bn(self.conv1, self.bn1, x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def load_pretrained(trunk: ResNet18Trunk, configured: str | None) -> Path:
    """Load ImageNet weights into ``trunk``: ``configured`` (``model.backbone_weights``) when set, else
    torchvision's file from torch's hub cache, downloaded there once per node (:mod:`.weights`)."""
    path = local_weights(configured)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"{path}: cannot read ResNet-18 weights ({type(exc).__name__}: {exc})") from None
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = trunk.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{path}: not ResNet-18 weights (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return path
