"""Training config: the original trainer's file loads unchanged; overrides typed like YAML; bad keys rejected."""

from pathlib import Path

import pytest

from tune_app.config import Config, load_config, parse_override, save_config
from tune_app.errors import UserError

from .conftest import FIXTURES, TINY

ORIGINAL = FIXTURES / "original_config.yaml"


def test_original_config_loads_unchanged_with_its_values():
    cfg = load_config(ORIGINAL)
    assert cfg.data.joint_topic == "/joint_states"
    assert cfg.data.camera_topic == "/camera/camera/depth/image_rect_raw"
    assert cfg.data.fps == 30 and cfg.data.max_offset_ms == 50.0
    assert cfg.conventions.joint_sign == [1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
    assert cfg.conventions.image_resize == [480, 848]
    assert (cfg.model.dim_model, cfg.model.n_heads, cfg.model.dim_feedforward) == (512, 8, 3200)
    assert cfg.model.pretrained_backbone is True
    t = cfg.training
    assert (t.device, t.seed, t.batch_size, t.num_workers, t.steps) == ("cuda", 1000, 4, 2, 5000)
    assert (t.lr, t.lr_backbone, t.weight_decay, t.grad_clip_norm, t.kl_weight) == (1e-5, 1e-5, 1e-4, 10.0, 10.0)
    assert (t.log_freq, t.save_freq) == (100, 1000)
    assert cfg.wandb.project == "ur10e-act-train" and cfg.wandb.enabled is False and cfg.wandb.tags == []


def test_old_config_keeps_old_meanings():
    cfg = load_config(ORIGINAL)
    assert cfg.training.scheduler == "none"          # absent -> none
    assert cfg.model.kl_reduction == "mean"           # the original's KL, so it trains the same way
    assert cfg.training.num_workers == 2 and cfg.ray.num_workers == 1  # loader workers != DDP workers
    # relative paths resolve against the config file's directory (the original: against train.py beside it)
    assert Path(cfg.training.output_dir) == (FIXTURES / "../outputs/train-rosbag-act").resolve()
    assert Path(cfg.data.bag_dir) == (FIXTURES / "../rosbag-to-lerobot/local_bags").resolve()


def test_missing_wandb_section_means_off(tmp_path):
    text = ORIGINAL.read_text().split("wandb:")[0]
    path = tmp_path / "no_wandb.yaml"
    path.write_text(text)
    assert load_config(path).wandb.enabled is False


def test_original_osmo_ddp_config_loads():
    cfg = load_config(FIXTURES / "original_osmo_config.yaml")
    assert cfg.training.scheduler == "cosine" and cfg.training.num_workers == 4
    assert cfg.wandb.tags == ["osmo", "ddp"] and cfg.training.output_dir == "/output/train-rosbag-act"


@pytest.mark.parametrize("text, expected", [
    ("training.lr=5e-5", 5e-5),
    ("training.lr=1.0e-4", 1e-4),
    ("training.steps=100", 100),
    ("wandb.enabled=true", True),
    ("wandb.run_name=null", None),
    ("wandb.tags=[osmo,sweep]", ["osmo", "sweep"]),
    ("wandb.run_name=my run", "my run"),
])
def test_override_values_are_typed_like_yaml(text, expected):
    key, value = parse_override(text)
    cfg = load_config(ORIGINAL, [text])
    section, name = key.split(".")
    got = getattr(getattr(cfg, section), name)
    assert got == expected and type(got) is type(expected)


def test_int_where_float_expected_becomes_float():
    cfg = load_config(None, ["training.lr=1", "training.kl_weight=3"])
    assert isinstance(cfg.training.lr, float) and cfg.training.kl_weight == 3.0


def test_unknown_key_in_file_names_file_key_and_closest(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("training:\n  lrr: 1.0e-4\n")
    with pytest.raises(UserError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "'training.lrr'" in msg and "did you mean 'training.lr'" in msg
    assert "\n" not in msg


def test_unknown_override_key_names_closest():
    with pytest.raises(UserError, match=r"--override trainng.steps: unknown config key 'trainng.steps' \(did you mean 'training.steps'\?\)"):
        load_config(ORIGINAL, ["trainng.steps=3"])


def test_unknown_section_is_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trainig:\n  lr: 1.0\n")
    with pytest.raises(UserError, match="unknown config section 'trainig' \\(did you mean 'training'\\?\\)"):
        load_config(path)


@pytest.mark.parametrize("override, words", [
    ("training.steps=abc", "must be int, got 'abc'"),
    ("training.lr=true", "must be float"),
    ("wandb.tags=osmo", "must be list[str]"),
    ("training.scheduler=linear", "'none' | 'cosine'"),
    ("model.dim_model=30", "divisible by model.n_heads"),
    ("training.batch_size=0", "must be > 0"),
])
def test_wrong_types_and_values_are_rejected(override, words):
    with pytest.raises(UserError) as err:
        load_config(ORIGINAL, [override])
    assert words in str(err.value)


def test_override_without_equals_is_rejected():
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        load_config(None, ["training.lr"])


def test_min_lr_above_lr_is_rejected_for_cosine():
    with pytest.raises(UserError, match="training.min_lr"):
        load_config(None, ["training.scheduler=cosine", "training.lr=1e-5", "training.min_lr=1e-3"])


def test_invalid_yaml_is_one_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("training:\n  lr: [1, 2\n")
    with pytest.raises(UserError) as err:
        load_config(path)
    assert "invalid YAML" in str(err.value) and str(path) in str(err.value)


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(TINY, ["training.lr=5e-5", "wandb.tags=[a,b]"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg and isinstance(again, Config)
