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
from tune_app.policy.ensemble import TemporalEnsembler, executed_actions

from .conftest import REPO, TINY


def test_ur10e_preset_has_lerobots_parameter_count():
    cfg = load_config(REPO / "configs" / "act_ur10e.yaml")
    assert count_parameters(ACTPolicy(cfg.model)) == 51_597_190      # LeRobot 0.4.4's ACT at these sizes


def test_resnet_trunk_matches_torchvision_names_with_frozen_batchnorm():
    trunk = ResNet18Trunk()
    # torchvision's 11,176,512 less the BatchNorm affine terms, which are frozen buffers here (as in LeRobot)
    assert count_parameters(trunk) == 11_166_912
    names = set(trunk.state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer4.1.bn2.weight", "layer2.0.downsample.0.weight"} <= names
    assert not any(n.endswith("num_batches_tracked") for n in names)
    assert all(n.endswith("conv1.weight") or "conv" in n or "downsample.0" in n for n, _ in trunk.named_parameters())


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
    # mean (LeRobot's): padded steps count as zero error in an average over all 8 elements
    _, l1_mean, _ = act_loss(pred, target, is_pad, None, 10.0, l1_reduction="mean")
    assert l1_mean.item() == pytest.approx(0.5)


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


# ---------------------------------------------------------------- temporal ensembling


def test_temporal_ensembling_weights_the_oldest_chunk_first_as_in_the_act_paper():
    """Chunk size 3, coeff 0.5: chunk k predicted at step k holds 10*k + j for step k + j.
    Weights exp(-0.5 * i), i = 0 for the oldest chunk: 1, 0.60653066, 0.36787944."""
    ens = TemporalEnsembler(0.5, 3)
    chunks = [np.array([[10.0 * k + j] for j in range(3)]) for k in range(4)]
    got = [ens.step(c)[0] for c in chunks]
    w0, w1, w2 = 1.0, 0.60653066, 0.36787944
    assert got[0] == pytest.approx(0.0)                                              # c0[0]
    assert got[1] == pytest.approx((w0 * 1 + w1 * 10) / (w0 + w1))                   # c0[1], c1[0]
    assert got[2] == pytest.approx((w0 * 2 + w1 * 11 + w2 * 20) / (w0 + w1 + w2))   # c0[2], c1[1], c2[0]
    assert got[3] == pytest.approx((w0 * 12 + w1 * 21 + w2 * 30) / (w0 + w1 + w2))  # c0 has no step 3
    ens.reset()
    assert ens.step(chunks[3])[0] == pytest.approx(30.0)
    plain = TemporalEnsembler(0.0, 3)                                                  # coeff 0: a plain mean
    assert [plain.step(c)[0] for c in chunks][2] == pytest.approx((2 + 11 + 20) / 3)


def test_temporal_ensembling_equals_lerobots_running_form():
    """The same sums as LeRobot's ACTTemporalEnsembler, which keeps a running weighted average."""
    rng = np.random.default_rng(0)
    chunk, coeff = 5, 0.01
    w = np.exp(-coeff * np.arange(chunk))
    cum = np.cumsum(w)
    ens, running, count = TemporalEnsembler(coeff, chunk), None, None
    for _ in range(12):
        actions = rng.normal(size=(chunk, 2))
        if running is None:
            running, count = actions.copy(), np.ones(chunk, dtype=int)
        else:
            running = (running * cum[count - 1][:, None] + actions[:-1] * w[count][:, None]) / cum[count][:, None]
            count = np.minimum(count + 1, chunk)
            running, count = np.concatenate([running, actions[-1:]]), np.concatenate([count, [1]])
        expected, running, count = running[0], running[1:], count[1:]
        np.testing.assert_allclose(ens.step(actions), expected, rtol=1e-12)


def test_executed_actions_without_ensembling_run_each_chunk_open_loop():
    chunks = np.arange(7 * 3 * 1, dtype=float).reshape(7, 3, 1)     # the chunk predicted at each of 7 steps
    done = executed_actions(chunks, None)[:, 0]
    assert done.tolist() == [chunks[0, 0, 0], chunks[0, 1, 0], chunks[0, 2, 0], chunks[3, 0, 0], chunks[3, 1, 0],
                             chunks[3, 2, 0], chunks[6, 0, 0]]


def test_predict_step_queries_every_step_only_when_ensembling(tmp_path):
    cfg = load_config(TINY, ["data.demo_episodes=4", "data.demo_episode_len=12", "model.chunk_size=4"])
    prepared = prepare(cfg)
    save_pretrained(tmp_path, ACTPolicy(cfg.model).eval(), cfg, prepared.stats)
    eps = prepared.episodes
    for coeff, queries in ((None, 3), (0.01, 10)):
        policy = load_policy(tmp_path, temporal_ensemble_coeff=coeff)
        calls = []
        predict = policy.predict
        policy.predict = lambda s, i: calls.append(1) or predict(s, i)  # noqa: B023 - count queries
        policy.reset()
        actions = [policy.predict_step(eps.states[t], eps.images[t, 0]) for t in range(10)]
        assert len(calls) == queries and actions[0].shape == (cfg.model.action_dim,)
        np.testing.assert_allclose(actions[0], predict(eps.states[:1], eps.images[:1])[0, 0], rtol=1e-5)
    with pytest.raises(UserError):
        load_policy(tmp_path, temporal_ensemble_coeff=-1.0)
    assert load_policy(tmp_path).temporal_ensemble_coeff is None          # the checkpoint's own (off)
