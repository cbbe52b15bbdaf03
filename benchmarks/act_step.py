"""Training-step throughput of tune_app's ACT against LeRobot's, measured side by side, and their quality.

    python benchmarks/act_step.py                          # tune_app only (LeRobot not installed)
    PYTHONPATH=. /tmp/lerobot-venv/bin/python benchmarks/act_step.py   # both (see tools/lerobot_reference.py)

Throughput: one training step is forward, loss, backward, gradient clipping (10) and AdamW, each side as it
trains (tune_app's ``build_optimizer``; LeRobot's ACT optimizer preset over ``get_optim_params()``), fp32,
on the same synthetic batch (batch 8, chunk 100, 40 % of the chunks padded at their end), at act_ur10e
model sizes and each image size asked for. Steps alternate between the two models round by round so
both see the same machine; the medians of the per-step times are compared.

Quality (with LeRobot): both models start from the same weights (tune_app's init, mapped to LeRobot's names),
train the same steps on the same demo batches with the same optimizer, and are scored by the validation L1
of inference-mode chunks (latent 0) on held-out demo episodes, the metric a sweep ranks by.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tune_app.config import load_config  # noqa: E402
from tune_app.policy.act import ACTPolicy, act_loss  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def lerobot():
    """LeRobot's ACT modules, or None where LeRobot is not installed."""
    try:
        sys.path.insert(0, str(REPO / "tools"))
        from lerobot_reference import import_lerobot

        import_lerobot()
        from lerobot.configs.types import FeatureType, PolicyFeature
        from lerobot.policies.act.configuration_act import ACTConfig
        from lerobot.policies.act.modeling_act import ACTPolicy as LeRobotACT
    except ImportError:
        return None
    return ACTConfig, LeRobotACT, FeatureType, PolicyFeature


def lerobot_policy(lr, cfg, h: int, w: int):
    ACTConfig, LeRobotACT, FeatureType, PolicyFeature = lr  # noqa: N806
    m, t = cfg.model, cfg.training
    config = ACTConfig(
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (m.state_dim,)),
                        "observation.images.color": PolicyFeature(FeatureType.VISUAL, (3, h, w))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (m.action_dim,))},
        chunk_size=m.chunk_size, n_action_steps=m.chunk_size, dim_model=m.dim_model, n_heads=m.n_heads,
        dim_feedforward=m.dim_feedforward, n_encoder_layers=m.n_encoder_layers, n_decoder_layers=m.n_decoder_layers,
        n_vae_encoder_layers=m.n_vae_encoder_layers, latent_dim=m.latent_dim, dropout=m.dropout,
        kl_weight=t.kl_weight, optimizer_lr=t.lr, optimizer_lr_backbone=t.lr_backbone,
        optimizer_weight_decay=t.weight_decay, pretrained_backbone_weights=None, device="cpu")
    return LeRobotACT(config)


def our_optimizer(model, cfg) -> torch.optim.Optimizer:
    from tune_app.train.optim import build_optimizer

    return build_optimizer(model, cfg)


def lerobot_optimizer(policy) -> torch.optim.Optimizer:
    return policy.config.get_optimizer_preset().build(policy.get_optim_params())


def synthetic_batch(cfg, h: int, w: int, batch: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    m = cfg.model
    pad = torch.zeros(batch, m.chunk_size, dtype=torch.bool)
    pad[: int(batch * 0.4 + 0.5), m.chunk_size // 2:] = True
    return {"state": torch.randn(batch, m.state_dim, generator=g), "image": torch.randn(batch, 3, h, w, generator=g),
            "action": torch.randn(batch, m.chunk_size, m.action_dim, generator=g), "action_is_pad": pad}


def as_lerobot(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"observation.state": batch["state"], "observation.images.color": batch["image"],
            "action": batch["action"], "action_is_pad": batch["action_is_pad"]}


def ours_step(model, opt, batch, cfg) -> torch.Tensor:
    pred, latent = model(batch["state"], batch["image"], batch["action"], batch["action_is_pad"])
    loss, _, _ = act_loss(pred, batch["action"], batch["action_is_pad"], latent, cfg.training.kl_weight, "sum", "mean")
    return _finish(model, opt, loss)


def lerobot_step(policy, opt, batch, cfg) -> torch.Tensor:
    loss, _ = policy.forward(as_lerobot(batch))
    return _finish(policy, opt, loss)


def _finish(model, opt, loss) -> torch.Tensor:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
    opt.step()
    return loss.detach()


def throughput(cfg, h: int, w: int, rounds: int, lr) -> None:
    batch = synthetic_batch(cfg, h, w)
    torch.manual_seed(0)
    ours = ACTPolicy(cfg.model).train()
    runners = [("tune_app", ours, our_optimizer(ours, cfg), ours_step)]
    if lr is not None:
        theirs = lerobot_policy(lr, cfg, h, w).train()
        runners.append(("LeRobot", theirs, lerobot_optimizer(theirs), lerobot_step))
    times: dict[str, list[float]] = {name: [] for name, *_ in runners}
    for r in range(rounds + 1):                       # round 0 warms up (allocator, kernels) and is not counted
        for name, model, opt, step in runners if r % 2 == 0 else runners[::-1]:
            start = time.perf_counter()
            step(model, opt, batch, cfg)
            if r:
                times[name].append(time.perf_counter() - start)
    rates = {name: len(batch["state"]) / statistics.median(ts) for name, ts in times.items()}
    line = f"{h}x{w}: tune_app {rates['tune_app']:.2f} samples/s"
    if "LeRobot" in rates:
        line += f", LeRobot {rates['LeRobot']:.2f} samples/s, ratio tune_app/LeRobot {rates['tune_app'] / rates['LeRobot']:.3f}"
    print(line + f" (median of {rounds} steps each, interleaved)", flush=True)


def quality(steps: int, seeds: int, lr) -> None:
    """Same init, data, batches and optimizer for both; validation L1 of inference-mode chunks, per seed
    (dropout and the CVAE's sampling draw differently in the two, so one seed alone says little)."""
    from tune_app.data import prepare
    from tune_app.train.batches import BatchStream, ShardedEpochSampler

    cfg = load_config(REPO / "configs" / "act_tiny.yaml", ["training.device=cpu", "data.demo_episodes=16"])
    h, w = cfg.conventions.image_resize
    prepared = prepare(cfg)
    train_ds, val_ds = prepared.datasets(cfg.model.chunk_size)
    val = torch.utils.data.default_collate([val_ds[i] for i in range(len(val_ds))])
    valid = (~val["action_is_pad"]).unsqueeze(-1).float()
    scores: dict[str, list[float]] = {"tune_app": [], "LeRobot": []}
    for seed in range(seeds):
        torch.manual_seed(cfg.training.seed + seed)
        ours = ACTPolicy(cfg.model)
        theirs = lerobot_policy(lr, cfg, h, w)
        theirs.model.load_state_dict(ours.state_dict())                    # the same starting weights
        opt_ours, opt_theirs = our_optimizer(ours, cfg), lerobot_optimizer(theirs)
        sampler = ShardedEpochSampler(len(train_ds), 0, 1, cfg.training.seed + seed, cfg.training.batch_size)
        loader = torch.utils.data.DataLoader(train_ds, batch_size=cfg.training.batch_size, sampler=sampler, drop_last=True)
        stream = iter(BatchStream(loader, sampler))
        for _ in range(steps):
            batch = next(stream)
            single = {**batch, "image": batch["image"][:, 0]}              # the demo has one camera
            ours_step(ours.train(), opt_ours, single, cfg)
            lerobot_step(theirs.train(), opt_theirs, single, cfg)
        with torch.no_grad():
            preds = {"tune_app": ours.eval()(val["state"], val["image"][:, 0])[0],
                     "LeRobot": theirs.eval().predict_action_chunk(
                         {"observation.state": val["state"], "observation.images.color": val["image"][:, 0]})}
        for name, pred in preds.items():
            err = (pred - val["action"]).abs() * valid
            scores[name].append(float(err.sum() / (valid.sum() * val["action"].shape[-1])))
    mean = {k: statistics.mean(v) for k, v in scores.items()}
    per_seed = ", ".join(f"{a:.4f}/{b:.4f}" for a, b in zip(scores["tune_app"], scores["LeRobot"], strict=True))
    print(f"quality after {steps} steps (act_tiny, demo data, same init/batches/optimizer settings), validation L1 "
          f"tune_app/LeRobot per seed: {per_seed}; mean {mean['tune_app']:.4f} vs {mean['LeRobot']:.4f}, "
          f"ratio {mean['tune_app'] / mean['LeRobot']:.3f} (lower is better)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="96x128,240x424", help="image sizes HxW, comma-separated (act_ur10e: 480x848)")
    parser.add_argument("--rounds", type=int, default=6, help="measured steps per model and size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quality-steps", type=int, default=300, help="0: skip the quality comparison")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the quality comparison")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lr = lerobot()
    print(f"torch {torch.__version__}, {args.threads} threads; LeRobot: {'yes' if lr else 'not installed (tune_app only)'}")
    cfg = load_config(REPO / "configs" / "act_ur10e.yaml", ["training.device=cpu"])
    for size in args.sizes.split(","):
        h, w = (int(x) for x in size.lower().split("x"))
        throughput(cfg, h, w, args.rounds, lr)
    if lr is not None and args.quality_steps:
        quality(args.quality_steps, args.seeds, lr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
