"""LeRobot itself, as the reference for tune_app's ACT, checkpoints and datasets (run in its own venv).

LeRobot pins torch < 2.11, so it is not a tune_app dependency. This script runs in a separate venv,
writes the fixtures that ``tests/`` compare against without LeRobot, and checks LeRobot's side of what
tune_app writes. The recipe (verified with LeRobot 0.4.4, torch 2.13.0 CPU, torchvision 0.28.0)::

    python3.11 -m venv /tmp/lerobot-venv && . /tmp/lerobot-venv/bin/activate
    pip install torch==2.13.0 torchvision==0.28.0
    pip install --no-deps lerobot==0.4.4
    pip install "datasets>=4,<5" "huggingface-hub>=0.34.2,<0.36" "diffusers>=0.27.2,<0.36" einops draccus==0.10.0 \\
        av jsonlines packaging deepdiff termcolor safetensors pandas pyarrow imageio accelerate gymnasium pyserial
    PYTHONPATH=. python tools/lerobot_reference.py fixtures            # -> tests/fixtures/lerobot/
    PYTHONPATH=. python tools/lerobot_reference.py check-export runs/lr_grid/best   # tune_app -> LeRobot
    PYTHONPATH=. python tools/lerobot_reference.py check-dataset                    # tune_app's datasets -> LeRobot

``check-*`` import tune_app from the checkout (PYTHONPATH=.; only its torch/numpy/pyarrow parts, no Ray).

torchvision 0.28.0's only wheel here is a CUDA build whose C++ ops do not load with the CPU torch; LeRobot
needs none of them, but importing torchvision registers Python fakes for ``torchvision::nms``/``qnms``,
which fails unless their schemas exist. :func:`import_lerobot` defines them first.

Fixtures (small enough to keep in git):

* ``act_tiny/``: a LeRobot ACT ``pretrained_model`` (dim 32, chunk 10, two 32x48 cameras) written by
  ``ACTPolicy.save_pretrained`` and LeRobot's processors; ``model.safetensors`` is stored xz-compressed
  (``model.safetensors.xz``; the bytes LeRobot wrote). Its ResNet-18 weights are structured (each
  kernel is a shared pattern times a per-output-channel sign and scale) so that they compress, and its
  frozen-BatchNorm statistics are random, so a mis-mapped tensor still changes the actions.
* ``act_tiny_io.safetensors``: fixed raw inputs (``state``, uint8 ``images`` (B, cams, H, W, 3)) and what
  LeRobot returns for them: ``select_action`` (the first action, after its post-processor) and ``chunk``
  (the whole unnormalised chunk).
* ``dataset_image/``, ``dataset_video/``: LeRobot v3 datasets written by ``LeRobotDataset.create`` /
  ``add_frame`` / ``save_episode`` (3 episodes of 6-9 frames, one camera as PNG or AV1 video), and
  ``dataset_source.npz``: the frames, states and actions that went in.
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
import sys
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "lerobot"
CAMERAS = ["observation.images.front", "observation.images.wrist"]
H, W, STATE_DIM, CHUNK = 32, 48, 6, 10
EPISODE_LENGTHS = (6, 9, 7)
DATA_H, DATA_W, FPS = 32, 48, 10


def import_lerobot():
    """Define the torchvision op schemas the CUDA torchvision wheel would have, then import LeRobot's ACT."""
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018 - present when torchvision's C++ ops load
    except (AttributeError, RuntimeError):
        lib = torch.library.Library("torchvision", "DEF")   # kept alive: the schemas live as long as it
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import_lerobot._lib = lib
    import lerobot
    from lerobot.policies.act import modeling_act

    return lerobot, modeling_act


def _feature(kind: str, shape):
    from lerobot.configs.types import FeatureType, PolicyFeature

    return PolicyFeature(getattr(FeatureType, kind), tuple(shape))


def _structured_backbone(model, gen) -> None:
    """Backbone weights that compress: kernel = pattern[in, k, k] * sign[out] * scale[out]; random BN buffers."""
    import torch

    for module in model.model.backbone.modules():
        if isinstance(module, torch.nn.Conv2d):
            out_ch, in_ch, kh, kw = module.weight.shape
            pattern = torch.randn(1, in_ch, kh, kw, generator=gen) * (2.0 / (in_ch * kh * kw)) ** 0.5
            sign = torch.where(torch.rand(out_ch, 1, 1, 1, generator=gen) < 0.5, -1.0, 1.0)
            scale = torch.tensor([0.5, 1.0, 1.5, 2.0])[torch.randint(0, 4, (out_ch,), generator=gen)].view(-1, 1, 1, 1)
            module.weight.data.copy_(pattern * sign * scale)
        elif type(module).__name__ == "FrozenBatchNorm2d":
            n = module.weight.shape[0]
            module.weight.copy_(1.0 + 0.1 * torch.randn(n, generator=gen))
            module.bias.copy_(0.05 * torch.randn(n, generator=gen))
            module.running_mean.copy_(0.05 * torch.randn(n, generator=gen))
            module.running_var.copy_(1.0 + 0.1 * torch.rand(n, generator=gen))


def write_checkpoint(out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    _, modeling_act = import_lerobot()
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.processor_act import make_act_pre_post_processors

    gen = torch.Generator().manual_seed(1234)
    cfg = ACTConfig(input_features={"observation.state": _feature("STATE", (STATE_DIM,)),
                                    **{c: _feature("VISUAL", (3, H, W)) for c in CAMERAS}},
                    output_features={"action": _feature("ACTION", (STATE_DIM,))},
                    dim_model=32, n_heads=2, dim_feedforward=64, chunk_size=CHUNK, n_action_steps=CHUNK,
                    n_encoder_layers=2, n_decoder_layers=1, n_vae_encoder_layers=2, latent_dim=8,
                    pretrained_backbone_weights=None, device="cpu")
    torch.manual_seed(99)
    policy = modeling_act.ACTPolicy(cfg)
    _structured_backbone(policy, gen)
    stats = {"observation.state": {"mean": torch.randn(STATE_DIM, generator=gen), "std": 0.5 + torch.rand(STATE_DIM, generator=gen)},
             "action": {"mean": torch.randn(STATE_DIM, generator=gen), "std": 0.5 + torch.rand(STATE_DIM, generator=gen)}}
    for i, cam in enumerate(CAMERAS):   # per-camera image statistics, as LeRobot computes them
        stats[cam] = {"mean": torch.tensor([0.40, 0.45, 0.50]).view(3, 1, 1) + 0.05 * i,
                      "std": torch.tensor([0.20, 0.22, 0.25]).view(3, 1, 1) + 0.01 * i}
    ckpt = out / "act_tiny"
    shutil.rmtree(ckpt, ignore_errors=True)
    policy.save_pretrained(ckpt)
    pre, post = make_act_pre_post_processors(cfg, stats)
    pre.save_pretrained(ckpt)
    post.save_pretrained(ckpt)
    raw = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors.xz").write_bytes(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
    (ckpt / "model.safetensors").unlink()

    # Fixed raw inputs and LeRobot's actions for them.
    b = 3
    state = torch.randn(b, STATE_DIM, generator=gen) * stats["observation.state"]["std"] + stats["observation.state"]["mean"]
    images = torch.randint(0, 256, (b, len(CAMERAS), H, W, 3), generator=gen, dtype=torch.uint8)
    first, chunk = lerobot_actions(policy, pre, post, state, images)
    save_file({"state": state, "images": images, "select_action": first, "chunk": chunk}, str(out / "act_tiny_io.safetensors"))
    print(f"checkpoint: {ckpt} ({len(raw) / 1e6:.1f} MB raw, {(ckpt / 'model.safetensors.xz').stat().st_size / 1e6:.2f} MB xz)")


def lerobot_actions(policy, pre, post, state, images):
    """LeRobot's deployment path: pre-processor -> select_action (after reset) -> post-processor; and the
    whole chunk, unnormalised."""
    import torch

    obs = {"observation.state": state.float()}
    cams = [k for k, v in policy.config.input_features.items() if v.type.name == "VISUAL"]
    for i, cam in enumerate(cams):
        obs[cam] = images[:, i].permute(0, 3, 1, 2).float() / 255.0
    batch = pre(obs)
    policy.reset()
    with torch.no_grad():
        first = post(policy.select_action(batch))
        chunk = post(policy.predict_action_chunk(batch))
    return first.float().contiguous(), chunk.float().contiguous()


def _source_episodes():
    gen = np.random.default_rng(5)
    eps = []
    for n in EPISODE_LENGTHS:
        state = gen.normal(size=(n, STATE_DIM)).astype(np.float32)
        action = (state + 0.1 * gen.normal(size=(n, STATE_DIM))).astype(np.float32)
        # smooth images (so AV1 keeps them), different per frame
        yy, xx = np.mgrid[0:DATA_H, 0:DATA_W]
        frames = np.stack([np.stack([(128 + 100 * np.sin(xx / 5.0 + t + c) * np.cos(yy / 7.0 - t)) for c in range(3)], -1)
                           for t in range(n)]).clip(0, 255).astype(np.uint8)
        eps.append((state, action, frames))
    return eps


def write_datasets(out: Path) -> None:
    import_lerobot()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    eps = _source_episodes()
    keys = ("observation.state", "action", "observation.images.front")
    np.savez(out / "dataset_source.npz", **{f"{k}_{e}": v for e, ep in enumerate(eps) for k, v in zip(keys, ep, strict=True)})
    names = [f"joint_{i}" for i in range(STATE_DIM)]
    for variant, dtype in (("image", "image"), ("video", "video")):
        root = out / f"dataset_{variant}"
        shutil.rmtree(root, ignore_errors=True)
        features = {"observation.state": {"dtype": "float32", "shape": (STATE_DIM,), "names": names},
                    "action": {"dtype": "float32", "shape": (STATE_DIM,), "names": names},
                    "observation.images.front": {"dtype": dtype, "shape": (DATA_H, DATA_W, 3), "names": ["height", "width", "channels"]}}
        ds = LeRobotDataset.create(repo_id=f"tune_app/fixture_{variant}", fps=FPS, features=features, root=root,
                                   use_videos=variant == "video")
        for state, action, frames in eps:
            for t in range(len(state)):
                ds.add_frame({"observation.state": state[t], "action": action[t], "observation.images.front": frames[t],
                              "task": "pick the part"})
            ds.save_episode()
        ds.finalize()
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        print(f"dataset: {root} ({size / 1e3:.0f} kB)")


def check_export(checkpoint: Path, tolerance: float) -> int:
    """tune_app exports ``checkpoint``; LeRobot loads the export strictly and gives tune_app's actions."""
    import tempfile

    import torch

    from tune_app.policy.checkpoint import export_lerobot, load_policy

    _, modeling_act = import_lerobot()
    from lerobot.policies.factory import make_pre_post_processors

    ours = load_policy(checkpoint)
    out = export_lerobot(checkpoint, Path(tempfile.mkdtemp()) / "exported")
    gen = torch.Generator().manual_seed(0)
    h, w = ours.cfg.conventions.image_resize
    b = 4
    state = torch.from_numpy(ours.stats.state_mean) + torch.randn(b, ours.cfg.model.state_dim, generator=gen) * torch.from_numpy(ours.stats.state_std)
    images = torch.randint(0, 256, (b, len(ours.cameras), h, w, 3), generator=gen, dtype=torch.uint8)
    chunk = torch.from_numpy(ours.predict(state.numpy(), images.numpy()))
    first = []
    for i in range(b):
        ours.reset()
        first.append(torch.from_numpy(ours.predict_step(state[i].numpy(), images[i].numpy())))
    policy = modeling_act.ACTPolicy.from_pretrained(str(out), strict=True)
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(out))     # LeRobot's deployment path
    their_first, their_chunk = lerobot_actions(policy, pre, post, state, images)
    diff = max(float((their_first - torch.stack(first)).abs().max()), float((their_chunk - chunk).abs().max()))
    print(f"LeRobot ACTPolicy.from_pretrained(export of {checkpoint}) [strict]: select_action and chunk vs "
          f"tune_app's load_policy: max |diff| = {diff:.3g} (tolerance {tolerance:g})")
    return 0 if diff <= tolerance else 1


def _lerobot_can_decode_video() -> bool:
    import torchvision

    if hasattr(torchvision.io, "VideoReader"):
        return True
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure to load means it cannot decode here
        return False
    return True


def _pyav_frames(video_path, timestamps, tolerance_s, backend=None):
    """(len(timestamps), 3, H, W) float frames in [0, 1]: the decoded frame nearest each timestamp, which must
    be within ``tolerance_s`` (the contract of LeRobot's decode_video_frames)."""
    import av
    import torch

    with av.open(str(video_path)) as container:
        stream = container.streams.video[0]
        frames = [(float(f.pts * stream.time_base), f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
    out = []
    for ts in timestamps:
        t, img = min(frames, key=lambda f: abs(f[0] - ts))
        if abs(t - ts) > tolerance_s:
            raise AssertionError(f"{video_path}: no frame within {tolerance_s} s of {ts} (nearest {t})")
        out.append(torch.from_numpy(img).permute(2, 0, 1).float() / 255.0)
    return torch.stack(out)


def check_dataset(out: Path) -> int:
    """tune_app writes LeRobot datasets (PNG and AV1 video, several data files); LeRobot opens them and
    every frame matches (PNG exactly, video within a PSNR bound)."""
    from tune_app.data.demo import make_demo
    from tune_app.data.lerobot_writer import write_lerobot_dataset

    import_lerobot()
    from lerobot.datasets import lerobot_dataset
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    if not _lerobot_can_decode_video():
        print("LeRobot's video decoders are unusable here (torchvision 0.28 has no io.VideoReader; torchcodec's only "
              "wheel needs CUDA): its decode_video_frames is replaced by a PyAV frame lookup; LeRobot still picks "
              "the file and the timestamps")
        lerobot_dataset.decode_video_frames = _pyav_frames
    demo = make_demo(6, 30, (48, 64), num_cameras=2)
    failures = 0
    for variant, codec in (("image", None), ("video", "av1")):
        root = out / f"tune_app_{variant}"
        shutil.rmtree(root, ignore_errors=True)
        write_lerobot_dataset(root, demo, fps=30, rows_per_file=70, video_codec=codec, episodes_per_video_file=4)
        info = json.loads((root / "meta" / "info.json").read_text())
        cams = [k for k, v in info["features"].items() if v["dtype"] in ("image", "video")]
        ds = LeRobotDataset(repo_id=f"local/{variant}", root=root, video_backend="pyav")
        worst, bad = 99.0, 0
        for i in range(len(ds)):
            item = ds[i]
            row = int(item["index"])
            bad += int(not np.allclose(item["observation.state"].numpy(), demo.states[row], atol=1e-6))
            bad += int(not np.allclose(item["action"].numpy(), demo.actions[row], atol=1e-6))
            for c, key in enumerate(cams):
                got = (item[key].permute(1, 2, 0).numpy() * 255).round()
                mse = float(((got - demo.images[row, c].astype(np.float64)) ** 2).mean())
                psnr = 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)
                worst = min(worst, psnr)
                bad += int(psnr < (99.0 if codec is None else 28.0))
        print(f"LeRobotDataset({root}): {ds.num_episodes} episodes, {len(ds)} frames, all read; "
              f"{bad} mismatches; worst image PSNR {worst:.1f} dB")
        failures += bad
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fixtures", help="write tests/fixtures/lerobot (checkpoint, its actions, datasets)")
    p.add_argument("--out", type=Path, default=FIXTURES)
    p = sub.add_parser("check-export", help="LeRobot loads tune_app's export of a checkpoint and gives its actions")
    p.add_argument("checkpoint", type=Path, help="a tune_app checkpoint (or its pretrained_model/)")
    p.add_argument("--tolerance", type=float, default=1e-4)
    p = sub.add_parser("check-dataset", help="LeRobot opens datasets tune_app writes; every frame matches")
    p.add_argument("--out", type=Path, default=Path("/tmp/tune_app_lerobot_check"))
    args = parser.parse_args(argv)
    if args.command == "fixtures":
        args.out.mkdir(parents=True, exist_ok=True)
        write_checkpoint(args.out)
        write_datasets(args.out)
        return 0
    if args.command == "check-export":
        return check_export(args.checkpoint, args.tolerance)
    args.out.mkdir(parents=True, exist_ok=True)
    return check_dataset(args.out)


if __name__ == "__main__":
    sys.exit(main())
