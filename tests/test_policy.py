"""The ACT policy: shapes, loss terms, the ur10e preset's size, local pretrained weights, checkpoints."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tune_app.config import load_config
from tune_app.data import prepare
from tune_app.errors import UserError
from tune_app.policy.act import ACTPolicy, act_loss, count_parameters
from tune_app.policy.backbone import ResNet18Trunk
from tune_app.policy.checkpoint import load_policy, save_pretrained

from .conftest import REPO, TINY


def test_ur10e_preset_has_the_original_parameter_count():
    cfg = load_config(REPO / "configs" / "act_ur10e.yaml")
    assert count_parameters(ACTPolicy(cfg.model)) == 51_601_158


def test_resnet_trunk_matches_torchvision_size_and_names():
    trunk = ResNet18Trunk()
    assert count_parameters(trunk) == 11_176_512
    names = set(trunk.state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer4.1.bn2.weight", "layer2.0.downsample.0.weight"} <= names


def test_shapes_train_and_inference():
    cfg = load_config(TINY).model
    model = ACTPolicy(cfg)
    state, image = torch.randn(3, 6), torch.randn(3, 3, 48, 64)
    actions = torch.randn(3, cfg.chunk_size, 6)
    pred, (mu, logvar) = model(state, image, actions, torch.zeros(3, cfg.chunk_size, dtype=torch.bool))
    assert pred.shape == (3, cfg.chunk_size, 6) and mu.shape == logvar.shape == (3, cfg.latent_dim)
    model.eval()
    pred, latent = model(state, image)
    assert pred.shape == (3, cfg.chunk_size, 6) and latent is None
    two_cams = model(state, torch.randn(3, 2, 3, 48, 64))[0]
    assert two_cams.shape == pred.shape


def test_l1_ignores_padded_steps():
    pred, target = torch.zeros(1, 4, 2), torch.ones(1, 4, 2)
    target[0, 2:] = 100.0
    is_pad = torch.tensor([[False, False, True, True]])
    _, l1, kl = act_loss(pred, target, is_pad, None, 10.0)
    assert l1.item() == pytest.approx(1.0) and kl.item() == 0.0


def test_kl_reduction_sum_is_latent_dim_times_mean():
    mu, logvar = torch.randn(5, 32), torch.randn(5, 32)
    x = torch.zeros(5, 2, 2)
    total_s, _, kl_sum = act_loss(x, x, None, (mu, logvar), 2.0, "sum")
    _, _, kl_mean = act_loss(x, x, None, (mu, logvar), 2.0, "mean")
    assert kl_sum.item() == pytest.approx(32 * kl_mean.item(), rel=1e-5)
    assert total_s.item() == pytest.approx(2.0 * kl_sum.item(), rel=1e-5)
    expected = (-0.5 * (1 + logvar - mu**2 - logvar.exp())).sum(-1).mean()
    assert kl_sum.item() == pytest.approx(expected.item(), rel=1e-5)


def test_pretrained_backbone_loads_a_local_safetensors_file(tmp_path):
    source = ResNet18Trunk()
    weights = {k: v for k, v in source.state_dict().items()}
    weights["fc.weight"] = torch.zeros(1000, 512)   # torchvision files carry the classifier; it is skipped
    save_file(weights, str(tmp_path / "r18.safetensors"))
    cfg = load_config(TINY, ["model.pretrained_backbone=true", f"model.backbone_weights={tmp_path / 'r18.safetensors'}"])
    model = ACTPolicy(cfg.model)
    assert torch.equal(model.backbone.layer3[0].conv1.weight, source.layer3[0].conv1.weight)


def test_pretrained_backbone_without_weights_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torchhome"))
    cfg = load_config(TINY, ["model.pretrained_backbone=true"])
    with pytest.raises(UserError) as err:
        ACTPolicy(cfg.model)
    assert str(tmp_path / "torchhome" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in str(err.value)


def test_exported_checkpoint_round_trip(tmp_path):
    cfg = load_config(TINY, ["data.demo_episodes=6", "data.demo_episode_len=30"])
    prepared = prepare(cfg)
    model = ACTPolicy(cfg.model).eval()
    out = save_pretrained(tmp_path, model, cfg, prepared.stats)
    policy = load_policy(tmp_path)
    assert policy.path == out
    eps = prepared.episodes
    state, images = eps.states[:4], eps.images[:4]
    expected_norm = policy.normalise(state, images)
    with torch.no_grad():
        ref = model(*expected_norm)[0].numpy() * prepared.stats.action_std + prepared.stats.action_mean
    np.testing.assert_allclose(policy.predict(state, images), ref, rtol=1e-5, atol=1e-6)
    for name in ("config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json",
                 "policy_preprocessor_step_3_normalizer_processor.safetensors",
                 "policy_postprocessor_step_0_unnormalizer_processor.safetensors", "train_config.json"):
        assert (out / name).is_file(), name
