import os
import subprocess
import sys

import pytest

import chexcam
from chexcam.config import config_from_dict, config_to_dict, valid_keys
from chexcam.errors import ConfigError

from .conftest import CONFIGS, ROOT

CHEST = os.path.join(ROOT, "configs", "chestxray14.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_shipped_configs_validate_and_comment_every_key(path):
    cfg = chexcam.load_config(path)
    assert cfg.model.num_classes == len(cfg.data.labels)
    assert cfg.model.name in chexcam.list_models()
    # every key line carries a comment with its unit or reason
    for line in open(path, encoding="utf-8"):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not stripped.startswith("- ") and ":" in stripped:
            if stripped.endswith(":") and not line.startswith(" "):
                continue  # section header
            assert "#" in stripped, f"{os.path.basename(path)}: key without a comment: {stripped}"


def test_chestxray14_config_is_chexnet():
    cfg = chexcam.load_config(CHEST)
    assert tuple(cfg.data.labels) == chexcam.CHESTXRAY14_LABELS
    assert (cfg.data.resize, cfg.data.crop) == (256, 224)
    assert cfg.data.mean == [0.485, 0.456, 0.406] and cfg.data.std == [0.229, 0.224, 0.225]


def test_malaria_config_is_binary():
    cfg = chexcam.load_config(os.path.join(ROOT, "configs", "malaria.yaml"))
    assert cfg.model.num_classes == 1 and cfg.data.labels == ["Parasitized"]


def test_required_keys_exist():
    keys = set(valid_keys())
    for k in ("model", "data", "train", "eval", "cam", "output_dir", "device",
              "data.root", "model.weights", "train.epochs"):
        assert k in keys


def test_override_types_and_values():
    cfg = chexcam.load_config(CHEST, ["train.epochs=2", "train.lr=1e-4", "data.root=2024",
                                      "model.weights=null", "data.mean=[0.5, 0.5, 0.5]", "cam.normalize=global"])
    assert cfg.train.epochs == 2 and cfg.train.lr == pytest.approx(1e-4)
    assert cfg.data.root == "2024"  # a str key keeps the text as written
    assert cfg.model.weights is None and cfg.data.mean == [0.5, 0.5, 0.5] and cfg.cam.normalize == "global"
    assert isinstance(chexcam.load_config(CHEST, ["train.lr=1"]).train.lr, float)


def test_unknown_key_names_key_file_and_suggestion():
    with pytest.raises(ConfigError) as info:
        chexcam.load_config(CHEST, ["train.epochz=3"])
    msg = str(info.value)
    assert "train.epochz" in msg and "train.epochs" in msg and "chestxray14.yaml" in msg
    assert "\n" not in msg


def test_unknown_key_in_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  nmae: chexnet_densenet121\n")
    with pytest.raises(ConfigError, match=r"model\.nmae.*bad\.yaml.*model\.name"):
        chexcam.load_config(str(bad))


@pytest.mark.parametrize("override,pattern", [
    ("train.epochs=abc", r"train\.epochs.*integer"),
    ("train.amp=3", r"train\.amp.*true/false"),
    ("model.output_stride=12", r"output_stride.*4, 8, 16, 32"),
    ("data.labels=Atelectasis", r"data\.labels.*list"),
    ("train=3", r"train.*section"),
    ("train.epochs.x=1", r"train\.epochs.*not a section"),
    ("train.epochs", r"malformed.*KEY=VALUE"),
    ("=3", r"malformed"),
    ("train.epochs=[1,", r"malformed value"),
    ("model.num_classes=3", r"data\.labels.*3"),
    ("train.epochs=0", r"train\.epochs.*>= 1"),
])
def test_bad_overrides(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        chexcam.load_config(CHEST, [override])


def test_overrides_never_execute_code(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(ConfigError):
        chexcam.load_config(CHEST, [f"output_dir=!!python/object/apply:os.system ['touch {marker}']"])
    assert not marker.exists()


def test_roundtrip_through_checkpoint_dict_and_yaml(tmp_path):
    cfg = chexcam.load_config(CHEST, ["train.epochs=3"])
    again = config_from_dict(config_to_dict(cfg))
    assert config_to_dict(again) == config_to_dict(cfg)
    path = chexcam.save_config(cfg, str(tmp_path / "out" / "config.yaml"))
    assert config_to_dict(chexcam.load_config(path)) == config_to_dict(cfg)


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        chexcam.load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "broken.yaml"
    bad.write_text("model: [\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        chexcam.load_config(str(bad))


def test_tool_exits_2_with_one_line():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train.py"), "-c", CHEST,
                           "-o", "train.epochz=3"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "train.epochz" in lines[0] and "train.epochs" in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("tool", sorted(f for f in os.listdir(os.path.join(ROOT, "tools")) if f.endswith(".py")))
def test_every_tool_shares_the_cli(tool):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", tool), "--help"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "-c CONFIG" in proc.stdout and "-o KEY=VALUE" in proc.stdout
