"""The training configs in `configs/`: every one loads, and each ablation of the shipped recipe
differs from `configs/wvm_small.json` only in what its ablation changes, so the comparison stays
fair when the recipe moves on (a new render or model key added to one config and not the others
would otherwise pass unnoticed into the experiment log)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wvm.model import WVMConfig
from wvm.train import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = "wvm_small.json"
# per ablation: the keys it may change besides its version string
ABLATIONS = {
    "wvm_no_video.json": {"init_from", "init_autoencoder", "freeze_video", "model.video_loss_weight"},
    "wvm_scratch.json": {"init_from", "init_autoencoder", "freeze_video"},
    "wvm_joint_video.json": {"freeze_video"},
    "wvm_frozen_random.json": {"init_from", "init_autoencoder"},
    "wvm_frozen_lower.json": {"freeze_video", "freeze_video_layers"},
}


def flat(config: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = json.dumps(value)
    return out


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.json")), ids=lambda p: p.name)
def test_every_config_loads(path):
    config = TrainConfig.from_file(path)
    WVMConfig.from_dict(config.model)  # unknown model keys raise


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_differs_from_the_shipped_recipe_only_in_its_own_keys(name):
    shipped = flat(json.loads((CONFIGS / SHIPPED).read_text()))
    ablation = flat(json.loads((CONFIGS / name).read_text()))
    changed = {k for k in shipped.keys() | ablation.keys() if shipped.get(k) != ablation.get(k)}
    extra = changed - ABLATIONS[name] - {"model.version"}
    assert not extra, f"{name} also changes {sorted(extra)}"
    assert ablation["model.version"] != shipped["model.version"], f"{name} would label under the shipped model's version"


def test_ablations_do_what_their_names_say():
    load = {name: TrainConfig.from_file(CONFIGS / name) for name in [SHIPPED, *ABLATIONS]}
    weight = {name: WVMConfig.from_dict(c.model).video_loss_weight for name, c in load.items()}
    assert load[SHIPPED].init_from and load[SHIPPED].freeze_video  # stage 2 reads stage 1's frozen world model
    assert not load["wvm_no_video.json"].init_from and weight["wvm_no_video.json"] == 0  # encoder only, no video loss
    assert not load["wvm_scratch.json"].init_from and weight["wvm_scratch.json"] > 0  # world-model loss, no stage 1
    assert load["wvm_joint_video.json"].init_from and not load["wvm_joint_video.json"].freeze_video  # stage 1's stream trained on
    assert not load["wvm_frozen_random.json"].init_from and load["wvm_frozen_random.json"].freeze_video
    assert load["wvm_frozen_lower.json"].init_from and 0 < load["wvm_frozen_lower.json"].freeze_video_layers
    for name in ("wvm_no_video.json", "wvm_scratch.json", "wvm_joint_video.json", "wvm_frozen_lower.json"):
        assert not load[name].freeze_video, name
    # every video-stream ablation shares stage 1's encoder weights (its latent normalisation may differ: row 77)
    assert all(c.init_from or c.init_autoencoder for c in load.values())
