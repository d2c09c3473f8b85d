"""The model: shapes, the asymmetric mask, deterministic one-step inference, learning,
checkpoints; and the metrics against hand-computed cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wvm.checkpoint import CheckpointError, load_model, save_model
from wvm.metrics import expert_voc, ground_truth, hesitation_rmse, retry_voc, spearman
from wvm.model import Batch, StaticValueModel, WorldValueModel, WVMConfig

SMALL = dict(video_width=32, value_width=16, depth=2, heads=2, head_dim=8, ae_widths=(16, 16, 16), latent_channels=4)


def small_model(**overrides) -> WorldValueModel:
    torch.manual_seed(0)
    return WorldValueModel(WVMConfig(**{**SMALL, **overrides})).eval()


def random_batch(config: WVMConfig, b: int = 3, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    s = config.latent_size
    return Batch(
        latents=torch.randn(b, config.clip_frames, config.latent_channels, s, s, generator=g),
        text=torch.randn(b, config.text_dim, generator=g),
        prefix_value=torch.rand(b, generator=g),
        values=torch.rand(b, config.horizon, generator=g),
    )


def test_shapes():
    model = small_model()
    cfg = model.config
    batch = random_batch(cfg)
    t = torch.zeros(3)
    video, value = model(batch.latents, batch.text, batch.prefix_value, batch.values, t)
    assert video.shape == (3, cfg.horizon * cfg.tokens_per_frame, cfg.patch_dim)
    assert value.shape == (3, cfg.horizon)
    frames = torch.randint(0, 256, (3, cfg.window_frames, 96, 120, 3), dtype=torch.uint8)  # any frame size
    values = model.predict(frames, batch.text, torch.zeros(3))
    assert values.shape == (3, cfg.horizon) and values.min() >= 0 and values.max() <= 1
    assert model.encode_frames(frames).shape == (3, cfg.window_frames, cfg.latent_channels, cfg.latent_size, cfg.latent_size)


def test_value_tokens_never_change_video_outputs():
    model = small_model()
    batch = random_batch(model.config)
    t = torch.full((3,), 0.3)
    video_a, value_a = model(batch.latents, batch.text, batch.prefix_value, batch.values, t)
    video_b, value_b = model(batch.latents, batch.text, 1 - batch.prefix_value, torch.rand(3, 4), t)
    assert torch.equal(video_a, video_b)  # video never attends to value tokens
    assert not torch.allclose(value_a, value_b)
    # ...but value tokens do attend to video tokens
    _, value_c = model(batch.latents + 1.0, batch.text, batch.prefix_value, batch.values, t)
    assert not torch.allclose(value_a, value_c)


def test_one_step_inference_is_deterministic_for_a_fixed_seed():
    cfg = WVMConfig(**SMALL)
    frames = torch.randint(0, 256, (4, cfg.window_frames, 64, 64, 3), dtype=torch.uint8)
    text, prefix = torch.randn(4, cfg.text_dim), torch.rand(4)
    a = small_model().predict(frames, text, prefix)
    b = small_model().predict(frames, text, prefix)  # a new model, same weights and noise seed
    assert torch.equal(a, b)
    alone = small_model().predict(frames[2:3], text[2:3], prefix[2:3])
    assert torch.allclose(alone, a[2:3], atol=1e-6)  # an answer does not depend on its batch
    other_seed = small_model(noise_seed=1)
    other_seed.load_state_dict(small_model().state_dict())
    assert not torch.equal(other_seed.predict(frames, text, prefix), a)


def test_a_tiny_training_run_lowers_the_loss():
    torch.manual_seed(0)
    model = WorldValueModel(WVMConfig(**SMALL)).train()
    batch = random_batch(model.config, b=16)
    batch.values = torch.sigmoid(batch.latents[:, 1:5].mean(dim=(2, 3, 4)) * 4)  # a function of the frames
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        torch.manual_seed(len(losses))
        loss, info = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(info["value"])
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


def test_static_baseline_ignores_temporal_context():
    torch.manual_seed(0)
    model = StaticValueModel(WVMConfig(**SMALL, kind="static")).eval()
    frames = torch.randint(0, 256, (2, 5, 64, 64, 3), dtype=torch.uint8)
    text = torch.randn(2, 384)
    a = model.predict(frames, text, torch.zeros(2))
    shuffled = frames[:, [4, 3, 2, 1, 0]]  # current frames 1..4 become 3, 2, 1, 0; other prefix
    b = model.predict(shuffled, text, torch.ones(2))
    assert torch.allclose(a[:, 0], b[:, 2], atol=1e-6) and torch.allclose(a[:, 2], b[:, 0], atol=1e-6)


def test_checkpoint_round_trip(tmp_path):
    model = small_model(version="test-1")
    digest = save_model(tmp_path / "ckpt", model, model.config)
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.version == "test-1" and loaded.checkpoint_hash == digest
    frames = torch.randint(0, 256, (2, 5, 64, 64, 3), dtype=torch.uint8)
    text, prefix = torch.randn(2, 384), torch.rand(2)
    assert torch.equal(loaded.model.predict(frames, text, prefix), model.predict(frames, text, prefix))
    assert not (tmp_path / "ckpt.tmp").exists()


def test_checkpoint_that_does_not_match_its_config(tmp_path):
    model = small_model()
    save_model(tmp_path / "ckpt", model, model.config)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["video_width"] = 48
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"weights do not match config\.json .*shape mismatch"):
        load_model(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(tmp_path / "ckpt")


# -- metrics (REFERENCE §2) -------------------------------------------------------------------


def test_ground_truth_by_hand():
    np.testing.assert_allclose(ground_truth(5, "expert"), [0, 0.25, 0.5, 0.75, 1])
    # hesitation T=8, [m, n] = [2, 4], x=2: v_m = v_n = 2 / (8 - 1 - 2) = 0.4
    np.testing.assert_allclose(ground_truth(8, "hesitation", 2, 4), [0, 0.2, 0.4, 0.4, 0.4, 0.6, 0.8, 1.0])
    # retry T=10, [m, n] = [4, 6], x=2: v_m = 4 / 6, v_n = 2 / 6
    gt = ground_truth(10, "retry", 4, 6)
    np.testing.assert_allclose(gt[[0, 4, 5, 6, 9]], [0, 4 / 6, 3 / 6, 2 / 6, 1])


def test_metrics_by_hand():
    assert expert_voc(np.array([0.0, 0.1, 0.3, 0.2])) == pytest.approx(0.8)
    assert expert_voc(np.full(6, 0.5)) == 0.0  # a constant prediction scores 0
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    pred = np.array([0, 0.2, 0.5, 0.4, 0.3, 0.6, 0.8, 1.0])
    gt = ground_truth(8, "hesitation", 2, 4)  # 0.4 on frames 2..4
    assert hesitation_rmse(pred, gt, 2, 4) == pytest.approx(np.sqrt((0.01 + 0 + 0.01) / 3))
    gt = ground_truth(10, "retry", 4, 6)
    falling = np.linspace(0.9, 0.1, 10)
    assert retry_voc(falling, gt, 4, 6) == pytest.approx(1.0)
    assert retry_voc(np.linspace(0, 1, 10), gt, 4, 6) == pytest.approx(-1.0)


def test_another_backbone_is_named_by_the_config(tmp_path, monkeypatch):
    # A second backbone, defined outside the package, chosen by config alone.
    (tmp_path / "my_backbone.py").write_text(
        "from wvm.model import SmallVideoBackbone\n"
        "class Wider(SmallVideoBackbone):\n"
        "    pass\n"
        "def build(config):\n"
        "    return Wider(config)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = small_model(backbone="my_backbone:build")
    assert type(model.video).__name__ == "Wider"
    frames = torch.randint(0, 256, (1, model.config.window_frames, 32, 32, 3), dtype=torch.uint8)
    assert model.predict(frames, torch.randn(1, 384), torch.zeros(1)).shape == (1, 4)
    with pytest.raises(ValueError, match="expected 'small' or 'package.module:factory'"):
        small_model(backbone="wan2.2")
