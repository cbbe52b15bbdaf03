"""The ACT model's own config: the ``model`` section of a training config.

It lives with the policy so that the model, its checkpoints and its loaders need nothing of the
training config; :mod:`tune_app.config` composes it into :class:`tune_app.config.Config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class ModelConfig:
    state_dim: int = 6
    action_dim: int = 6
    chunk_size: int = 100
    dim_model: int = 512
    n_heads: int = 8
    dim_feedforward: int = 3200
    n_encoder_layers: int = 4
    n_decoder_layers: int = 1
    n_vae_encoder_layers: int = 4
    latent_dim: int = 32
    dropout: float = 0.1
    use_vae: bool = True
    vision_backbone: Literal["resnet18"] = "resnet18"
    pretrained_backbone: bool = True      # the original trainer's default: torchvision's ImageNet ResNet-18
    backbone_weights: str | None = None   # local ResNet-18 weights (.safetensors or .pth); null: torchvision's, cached
    kl_reduction: Literal["mean", "sum"] = "mean"
    # L1 over the chunk: masked_mean = over the real (unpadded) steps (what tune_app did so far; the default, so a
    # config keeps its meaning); mean = over every element, padded steps as zero (LeRobot's; the shipped configs).
    l1_reduction: Literal["mean", "masked_mean"] = "masked_mean"
    pre_norm: bool = False                # LeRobot's option: pre-norm transformer layers (ACT: post-norm)
    feedforward_activation: Literal["relu", "gelu", "glu"] = "relu"
    # Inference only: null = execute each chunk open loop (ACT's default); a number >= 0 = query every step and
    # average the overlapping chunks with weights exp(-coeff * i), oldest first (LeRobot uses 0.01).
    temporal_ensemble_coeff: float | None = None
