"""ACT: a CVAE transformer policy that predicts a chunk of future actions (Zhao et al., 2023).

Layout (the original trainer's, whose parameter count this keeps):

* vision: ResNet-18 trunk -> 1x1 conv to ``dim_model`` -> image tokens + a 2-D sine position
  embedding; several cameras give their tokens side by side;
* CVAE encoder (training only): ``[cls, state, action_1..action_k]`` with a 1-D sine position
  embedding (as ACT and LeRobot; the original also fed the image tokens and gave actions no
  position), padded actions masked out; the cls output gives ``mu`` and ``logvar`` of the latent;
* encoder over ``[z, state, image tokens]``; decoder whose queries are learned action embeddings;
  a linear action head.

Loss: masked L1 on the chunk + ``kl_weight * KL``. ``kl_reduction: sum`` sums KL over the latent
dimensions and averages over the batch (ACT, LeRobot); ``mean`` averages over both (the original
trainer, 1/latent_dim as large for the same ``kl_weight``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tune_app.policy.backbone import ResNet18Trunk, load_pretrained
from tune_app.policy.config import ModelConfig


def sine_1d(length: int, dim: int, device=None) -> torch.Tensor:
    """(length, dim) fixed sinusoidal position table."""
    pos = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table


def sine_2d(height: int, width: int, dim: int, device=None) -> torch.Tensor:
    """(height * width, dim): dim/4 frequencies, sin and cos of each for y then x, row-major."""
    n = dim // 4
    freq = 1.0 / (10000.0 ** (torch.arange(n, dtype=torch.float32, device=device) / n))
    y = torch.arange(height, dtype=torch.float32, device=device)[:, None] * freq  # (H, n)
    x = torch.arange(width, dtype=torch.float32, device=device)[:, None] * freq   # (W, n)
    ey = torch.cat([y.sin(), y.cos()], dim=1)[:, None, :].expand(height, width, 2 * n)
    ex = torch.cat([x.sin(), x.cos()], dim=1)[None, :, :].expand(height, width, 2 * n)
    return torch.cat([ey, ex], dim=2).reshape(height * width, 4 * n)


def _encoder(cfg: ModelConfig, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(cfg.dim_model, cfg.n_heads, cfg.dim_feedforward, cfg.dropout,
                                       activation="relu", batch_first=True, norm_first=False)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class ACTPolicy(nn.Module):
    """``forward(state, image, actions=None, action_is_pad=None) -> (pred_actions, (mu, logvar) | None)``.

    ``state`` (B, state_dim) and ``image`` (B, 3, H, W) or (B, cameras, 3, H, W) are normalised;
    ``actions`` (B, chunk_size, action_dim), normalised, are given in training only (teacher forcing
    for the CVAE); without them the latent is zero, as at inference.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim_model
        self.backbone = ResNet18Trunk()
        if cfg.pretrained_backbone:
            load_pretrained(self.backbone, cfg.backbone_weights)
        self.img_proj = nn.Conv2d(ResNet18Trunk.out_channels, d, kernel_size=1)
        self.state_proj = nn.Linear(cfg.state_dim, d)
        if cfg.use_vae:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
            self.action_proj = nn.Linear(cfg.action_dim, d)
            self.vae_encoder = _encoder(cfg, cfg.n_vae_encoder_layers)
            self.mu_proj = nn.Linear(d, cfg.latent_dim)
            self.logvar_proj = nn.Linear(d, cfg.latent_dim)
            self.register_buffer("vae_pos", sine_1d(cfg.chunk_size + 2, d), persistent=False)
        self.latent_proj = nn.Linear(cfg.latent_dim, d)
        self.encoder = _encoder(cfg, cfg.n_encoder_layers)
        dec_layer = nn.TransformerDecoderLayer(d, cfg.n_heads, cfg.dim_feedforward, cfg.dropout,
                                               activation="relu", batch_first=True, norm_first=False)
        self.decoder = nn.TransformerDecoder(dec_layer, cfg.n_decoder_layers)
        self.action_queries = nn.Embedding(cfg.chunk_size, d)
        self.action_head = nn.Linear(d, cfg.action_dim)

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def image_tokens(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() == 4:
            image = image[:, None]
        b, cams = image.shape[:2]
        feat = self.img_proj(self.backbone(image.flatten(0, 1)))          # (B*cams, d, h, w)
        h, w = feat.shape[-2:]
        tokens = feat.flatten(2).transpose(1, 2) + sine_2d(h, w, feat.shape[1], feat.device).to(feat.dtype)
        return tokens.reshape(b, cams * h * w, -1)

    def posterior(self, state: torch.Tensor, actions: torch.Tensor,
                  action_is_pad: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """CVAE encoder: ``(mu, logvar)`` of the latent given the state and the true action chunk."""
        b = actions.shape[0]
        state_tok = self.state_proj(state)[:, None]
        seq = torch.cat([self.cls_token.expand(b, -1, -1), state_tok, self.action_proj(actions)], dim=1)
        seq = seq + self.vae_pos[: seq.shape[1]].to(seq.dtype)
        pad = None
        if action_is_pad is not None:
            pad = torch.cat([torch.zeros(b, 2, dtype=torch.bool, device=actions.device), action_is_pad], dim=1)
        cls_out = self.vae_encoder(seq, src_key_padding_mask=pad)[:, 0]
        return self.mu_proj(cls_out), self.logvar_proj(cls_out)

    def decode(self, state: torch.Tensor, image: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The action chunk for a given latent ``z`` (B, latent_dim)."""
        tokens = [self.latent_proj(z)[:, None], self.state_proj(state)[:, None], self.image_tokens(image)]
        memory = self.encoder(torch.cat(tokens, dim=1))
        queries = self.action_queries.weight[None].expand(state.shape[0], -1, -1)
        return self.action_head(self.decoder(queries, memory))

    def forward(self, state, image, actions=None, action_is_pad=None):
        if self.cfg.use_vae and actions is not None:
            mu, logvar = self.posterior(state, actions, action_is_pad)
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            return self.decode(state, image, z), (mu, logvar)
        return self.decode(state, image, state.new_zeros(state.shape[0], self.cfg.latent_dim)), None


def act_loss(pred: torch.Tensor, target: torch.Tensor, action_is_pad: torch.Tensor | None,
             latent: tuple[torch.Tensor, torch.Tensor] | None, kl_weight: float,
             kl_reduction: str = "sum") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(total, l1, kl)``: L1 over real (not padded) chunk steps + ``kl_weight * KL``."""
    err = (pred.float() - target.float()).abs()
    if action_is_pad is None:
        l1 = err.mean()
    else:
        valid = (~action_is_pad).unsqueeze(-1).to(err.dtype)
        l1 = (err * valid).sum() / (valid.sum() * err.shape[-1]).clamp_min(1.0)
    if latent is None:
        kl = err.new_zeros(())
    else:
        mu, logvar = (t.float() for t in latent)
        per_dim = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
        kl = per_dim.sum(-1).mean() if kl_reduction == "sum" else per_dim.mean()
    return l1 + kl_weight * kl, l1, kl


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
