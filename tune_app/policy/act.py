"""ACT: a CVAE transformer policy that predicts a chunk of future actions (Zhao et al., 2023).

Built module for module as LeRobot builds it (``lerobot.policies.act.modeling_act.ACT``, 0.4.4), so
that a state dict maps one to one: LeRobot's names are ours with a ``model.`` prefix
(:mod:`tune_app.policy.lerobot_format`). As there (and in DETR and the ACT paper):

* vision: a ResNet-18 trunk with frozen BatchNorm -> 1x1 conv to ``dim_model``; image tokens get a
  2-D sine position (positions in (0, 2pi]); cameras give their tokens one after the other;
* CVAE encoder (training only) over ``[cls, state, action_1..action_k]`` with a fixed 1-D sine
  position, padded actions masked out; the cls output gives ``mu`` and ``2 log sigma``;
* transformer encoder over ``[latent, state, image tokens]``; the latent and state tokens have learned
  positions; positions are added to the queries and keys of every layer, not to the values;
* decoder: zeros as input, learned positions added to its queries in every layer and the encoder's
  positions to the cross-attention keys, a final LayerNorm; a linear action head;
* Xavier-uniform initialisation of the encoder and decoder weights.

Two things differ, for speed only: attention is computed without materialising the attention weights
(LeRobot asks for them and drops them), and the backbone runs channels-last.

Loss: L1 on the chunk + ``kl_weight * KL``. ``l1_reduction: mean`` averages over every element of the
chunk with padded steps counted as zero (LeRobot's, and the original trainer's, which never padded);
``masked_mean`` averages over the real steps only. ``kl_reduction: sum`` sums the KL over the latent
dimensions and averages over the batch (ACT, LeRobot); ``mean`` averages over both (the original
trainer: 1/latent_dim as large for the same ``kl_weight``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from tune_app.policy.backbone import ResNet18Trunk, load_pretrained
from tune_app.policy.config import ModelConfig


def sine_1d(length: int, dim: int) -> torch.Tensor:
    """(length, dim) fixed sinusoidal table, computed as LeRobot (and ACT) compute it (float64, then float32)."""
    pos = np.arange(length, dtype=np.float64)[:, None]
    angle = pos / np.power(10000, 2 * (np.arange(dim) // 2) / dim)
    table = np.empty_like(angle)
    table[:, 0::2], table[:, 1::2] = np.sin(angle[:, 0::2]), np.cos(angle[:, 1::2])
    return torch.from_numpy(table).float()


def sine_2d(height: int, width: int, dim: int, device=None) -> torch.Tensor:
    """(dim, height, width): DETR's 2-D sine position for a feature map, ``dim/2`` channels for y then x,
    positions 1..H and 1..W scaled to (0, 2pi], sin and cos interleaved."""
    half = dim // 2
    eps, two_pi = 1e-6, 2 * math.pi
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    y = y / (y[-1] + eps) * two_pi
    x = x / (x[-1] + eps) * two_pi
    inv = 10000 ** (2 * (torch.arange(half, dtype=torch.float32, device=device) // 2) / half)

    def embed(r: torch.Tensor) -> torch.Tensor:                 # (n,) -> (n, half), sin/cos interleaved
        a = r[:, None] / inv
        return torch.stack((a[:, 0::2].sin(), a[:, 1::2].cos()), dim=-1).flatten(1)

    ey = embed(y)[:, None, :].expand(height, width, half)
    ex = embed(x)[None, :, :].expand(height, width, half)
    return torch.cat((ey, ex), dim=2).permute(2, 0, 1)


def _activation(name: str):
    return {"relu": F.relu, "gelu": F.gelu, "glu": F.glu}[name]


def _attend(attn: nn.MultiheadAttention, q, k, v, key_padding_mask=None) -> torch.Tensor:
    return attn(q, k, v, key_padding_mask=key_padding_mask, need_weights=False)[0]


class EncoderLayer(nn.Module):
    """DETR/LeRobot encoder layer (sequence first): positions on queries and keys, post-norm by default."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.dim_model
        self.self_attn = nn.MultiheadAttention(d, cfg.n_heads, dropout=cfg.dropout)
        self.linear1, self.linear2 = nn.Linear(d, cfg.dim_feedforward), nn.Linear(cfg.dim_feedforward, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout, self.dropout1, self.dropout2 = (nn.Dropout(cfg.dropout) for _ in range(3))
        self.activation, self.pre_norm = _activation(cfg.feedforward_activation), cfg.pre_norm

    def forward(self, x, pos=None, key_padding_mask=None):
        skip = x
        if self.pre_norm:
            x = self.norm1(x)
        qk = x if pos is None else x + pos
        x = skip + self.dropout1(_attend(self.self_attn, qk, qk, x, key_padding_mask))
        if self.pre_norm:
            skip, x = x, self.norm2(x)
        else:
            x = skip = self.norm1(x)
        x = skip + self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))
        return x if self.pre_norm else self.norm2(x)


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(layers))
        self.norm = nn.LayerNorm(cfg.dim_model) if cfg.pre_norm else nn.Identity()

    def forward(self, x, pos=None, key_padding_mask=None):
        for layer in self.layers:
            x = layer(x, pos, key_padding_mask)
        return self.norm(x)


class DecoderLayer(nn.Module):
    """DETR/LeRobot decoder layer: query positions in self- and cross-attention, encoder positions on the
    cross-attention keys."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.dim_model
        self.self_attn = nn.MultiheadAttention(d, cfg.n_heads, dropout=cfg.dropout)
        self.multihead_attn = nn.MultiheadAttention(d, cfg.n_heads, dropout=cfg.dropout)
        self.linear1, self.linear2 = nn.Linear(d, cfg.dim_feedforward), nn.Linear(cfg.dim_feedforward, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout, self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(cfg.dropout) for _ in range(4))
        self.activation, self.pre_norm = _activation(cfg.feedforward_activation), cfg.pre_norm

    def forward(self, x, memory, query_pos, memory_pos):
        skip = x
        if self.pre_norm:
            x = self.norm1(x)
        q = x + query_pos
        x = skip + self.dropout1(_attend(self.self_attn, q, q, x))
        if self.pre_norm:
            skip, x = x, self.norm2(x)
        else:
            x = skip = self.norm1(x)
        x = skip + self.dropout2(_attend(self.multihead_attn, x + query_pos, memory + memory_pos, memory))
        if self.pre_norm:
            skip, x = x, self.norm3(x)
        else:
            x = skip = self.norm2(x)
        x = skip + self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(x)))))
        return x if self.pre_norm else self.norm3(x)


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_decoder_layers))
        self.norm = nn.LayerNorm(cfg.dim_model)

    def forward(self, x, memory, query_pos, memory_pos):
        for layer in self.layers:
            x = layer(x, memory, query_pos, memory_pos)
        return self.norm(x)


class ACTPolicy(nn.Module):
    """``forward(state, image, actions=None, action_is_pad=None) -> (pred_actions, (mu, log_sigma_x2) | None)``.

    ``state`` (B, state_dim) and ``image`` (B, 3, H, W) or (B, cameras, 3, H, W) are normalised;
    ``actions`` (B, chunk_size, action_dim), normalised, are given in training only (teacher forcing
    for the CVAE); without them the latent is zero, as at inference.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim_model
        if cfg.use_vae:
            self.vae_encoder = Encoder(cfg, cfg.n_vae_encoder_layers)
            self.vae_encoder_cls_embed = nn.Embedding(1, d)
            self.vae_encoder_robot_state_input_proj = nn.Linear(cfg.state_dim, d)
            self.vae_encoder_action_input_proj = nn.Linear(cfg.action_dim, d)
            self.vae_encoder_latent_output_proj = nn.Linear(d, 2 * cfg.latent_dim)
            self.register_buffer("vae_encoder_pos_enc", sine_1d(cfg.chunk_size + 2, d)[None])
        self.backbone = ResNet18Trunk()
        self.encoder = Encoder(cfg, cfg.n_encoder_layers)
        self.decoder = Decoder(cfg)
        self.encoder_robot_state_input_proj = nn.Linear(cfg.state_dim, d)
        self.encoder_latent_input_proj = nn.Linear(cfg.latent_dim, d)
        self.encoder_img_feat_input_proj = nn.Conv2d(ResNet18Trunk.out_channels, d, kernel_size=1)
        self.encoder_1d_feature_pos_embed = nn.Embedding(2, d)           # latent, state
        self.decoder_pos_embed = nn.Embedding(cfg.chunk_size, d)
        self.action_head = nn.Linear(d, cfg.action_dim)
        for p in (*self.encoder.parameters(), *self.decoder.parameters()):
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        if cfg.pretrained_backbone:
            load_pretrained(self.backbone, cfg.backbone_weights)
        self.backbone.to(memory_format=torch.channels_last)

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def image_tokens(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (cams*h*w, B, d) and their positions (cams*h*w, 1, d), camera after camera."""
        if image.dim() == 4:
            image = image[:, None]
        b, cams = image.shape[:2]
        # frozen BN: per sample, so the cameras share one call; channels-last convolutions are ~25 % faster on CPU
        feat = self.backbone(image.flatten(0, 1).contiguous(memory_format=torch.channels_last))
        pos = sine_2d(feat.shape[-2], feat.shape[-1], self.cfg.dim_model, feat.device).to(feat.dtype)
        feat = self.encoder_img_feat_input_proj(feat)                     # (B*cams, d, h, w)
        tokens = feat.unflatten(0, (b, cams)).flatten(3).permute(1, 3, 0, 2).flatten(0, 1)
        return tokens, pos.flatten(1).T[:, None].repeat(cams, 1, 1)

    def posterior(self, state: torch.Tensor, actions: torch.Tensor,
                  action_is_pad: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """CVAE encoder: ``(mu, log_sigma_x2)`` of the latent given the state and the true action chunk."""
        b = actions.shape[0]
        seq = torch.cat([self.vae_encoder_cls_embed.weight[None].expand(b, -1, -1),
                         self.vae_encoder_robot_state_input_proj(state)[:, None],
                         self.vae_encoder_action_input_proj(actions)], dim=1).transpose(0, 1)
        pad = None
        if action_is_pad is not None:
            pad = torch.cat([torch.zeros(b, 2, dtype=torch.bool, device=actions.device), action_is_pad], dim=1)
        pos = self.vae_encoder_pos_enc[0, : seq.shape[0], None].to(seq.dtype)
        params = self.vae_encoder_latent_output_proj(self.vae_encoder(seq, pos, pad)[0])
        return params[:, : self.cfg.latent_dim], params[:, self.cfg.latent_dim:]

    def decode(self, state: torch.Tensor, image: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The action chunk (B, chunk_size, action_dim) for a given latent ``z`` (B, latent_dim)."""
        img_tokens, img_pos = self.image_tokens(image)
        tokens = torch.cat([self.encoder_latent_input_proj(z)[None], self.encoder_robot_state_input_proj(state)[None],
                            img_tokens])
        pos = torch.cat([self.encoder_1d_feature_pos_embed.weight[:, None], img_pos])
        memory = self.encoder(tokens, pos)
        query_pos = self.decoder_pos_embed.weight[:, None]
        out = self.decoder(torch.zeros_like(query_pos).expand(-1, state.shape[0], -1), memory, query_pos, pos)
        return self.action_head(out.transpose(0, 1))

    def forward(self, state, image, actions=None, action_is_pad=None):
        if self.cfg.use_vae and actions is not None:
            mu, log_sigma_x2 = self.posterior(state, actions, action_is_pad)
            z = mu + (0.5 * log_sigma_x2).exp() * torch.randn_like(mu)
            return self.decode(state, image, z), (mu, log_sigma_x2)
        return self.decode(state, image, state.new_zeros(state.shape[0], self.cfg.latent_dim)), None


def act_loss(pred: torch.Tensor, target: torch.Tensor, action_is_pad: torch.Tensor | None,
             latent: tuple[torch.Tensor, torch.Tensor] | None, kl_weight: float,
             kl_reduction: str = "sum", l1_reduction: str = "masked_mean",
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(total, l1, kl)``: the chunk's L1 (see the module doc for the reductions) + ``kl_weight * KL``."""
    err = (pred.float() - target.float()).abs()
    if action_is_pad is None:
        l1 = err.mean()
    else:
        valid = (~action_is_pad).unsqueeze(-1).to(err.dtype)
        total = (err * valid).sum()
        l1 = total / err.numel() if l1_reduction == "mean" else total / (valid.sum() * err.shape[-1]).clamp_min(1.0)
    if latent is None:
        kl = err.new_zeros(())
    else:
        mu, logvar = (t.float() for t in latent)
        per_dim = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
        kl = per_dim.sum(-1).mean() if kl_reduction == "sum" else per_dim.mean()
    return l1 + kl_weight * kl, l1, kl


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
