"""The model: shapes, the asymmetric mask, deterministic one-step inference, learning,
checkpoints; and the metrics against hand-computed cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipelines.weights import expert_voc, spearman
from wvm.checkpoint import CheckpointError, checkpoint_identity, load_model, save_ensemble, save_model
from wvm.metrics import auroc, failure_auroc, ground_truth, hesitation_rmse, retry_voc
from wvm.model import Batch, EnsembleValueModel, FrameProgress, StateRates, StateSuccess, StaticValueModel, WorldValueModel, WVMConfig, goal_progress, answer_episodes, progress_features, progress_from_rates, STATE_FEATURES, state_features, step_classes

SMALL = dict(video_width=32, value_width=16, depth=2, heads=2, head_dim=8, ae_widths=(16, 16, 16), latent_channels=4)
# the shipped value stream (v3): no episode time, motion and distance inputs, values from rates
V3 = dict(value_reads_time=False, value_reads_motion=True, value_reads_distances=True, value_head="rates")
VALUE_STREAMS = pytest.mark.parametrize(
    "stream",
    [{}, V3, {**V3, "value_success_token": True}, {**V3, "value_reads_goal": True}, {**V3, "value_reads_progress": "level"}, {**V3, "value_reads_progress": "change"}],
    ids=["direct", "rates", "rates+success-token", "rates+goal", "rates+progress", "rates+progress-change"],
)


def small_model(**overrides) -> WorldValueModel:
    torch.manual_seed(0)
    return WorldValueModel(WVMConfig(**{**SMALL, **overrides})).eval()


def random_batch(config: WVMConfig, b: int = 3, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    s, n = config.latent_size, config.samples_per_episode
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[0, n // 2 :] = False  # one shorter episode, padded
    return Batch(
        latents=torch.randn(b, n, config.latent_channels, s, s, generator=g),
        text=torch.randn(b, config.text_dim, generator=g),
        values=torch.rand(b, n, generator=g),
        valid=valid,
        fold=torch.arange(b) % 2,
    )


@VALUE_STREAMS
def test_shapes(stream):
    model = small_model(**stream)
    cfg = model.config
    batch = random_batch(cfg)
    n = cfg.samples_per_episode
    video, value = model(batch.latents, torch.ones(3, n), batch.text, batch.values, torch.zeros(3), batch.valid)
    assert video.shape == (3, n, cfg.tokens_per_frame, cfg.patch_dim)
    assert value.shape == (3, n)
    frames = torch.randint(0, 256, (3, n, 96, 120, 3), dtype=torch.uint8)  # any frame size
    values = model.predict(frames, batch.text, torch.tensor([5, n, n]))
    assert values.shape == (3, n) and values.min() >= 0 and values.max() <= 1
    assert torch.all(values[0, 5:] == 0)  # padding gets no value
    assert model.encode_frames(frames).shape == (3, n, cfg.latent_channels, cfg.latent_size, cfg.latent_size)


@VALUE_STREAMS
def test_value_tokens_never_change_video_outputs(stream):
    model = small_model(**stream)
    batch = random_batch(model.config)
    n = model.config.samples_per_episode
    frame_t, t = torch.full((3, n), 0.3), torch.full((3,), 0.3)
    video_a, value_a = model(batch.latents, frame_t, batch.text, batch.values, t, batch.valid)
    video_b, value_b = model(batch.latents, frame_t, batch.text, torch.rand(3, n), t, batch.valid)
    assert torch.equal(video_a, video_b)  # video never attends to value tokens
    assert not torch.allclose(value_a, value_b)
    # ...but value tokens do attend to video tokens
    _, value_c = model(batch.latents + 1.0, frame_t, batch.text, batch.values, t, batch.valid)
    assert not torch.allclose(value_a, value_c)


@VALUE_STREAMS
def test_padding_never_changes_real_outputs(stream):
    model = small_model(**stream)
    cfg = model.config
    frames = torch.randint(0, 256, (1, cfg.samples_per_episode, 32, 32, 3), dtype=torch.uint8)
    other = frames.clone()
    other[:, 7:] = 255 - other[:, 7:]  # different padding after 7 real samples
    text = torch.randn(1, cfg.text_dim)
    a, b = model.predict(frames, text, torch.tensor([7])), model.predict(other, text, torch.tensor([7]))
    assert torch.allclose(a, b, atol=1e-6)


@VALUE_STREAMS
def test_one_step_inference_is_deterministic_for_a_fixed_seed(stream):
    cfg = WVMConfig(**SMALL, **stream)
    frames = torch.randint(0, 256, (4, cfg.window_frames, 64, 64, 3), dtype=torch.uint8)
    text, lengths = torch.randn(4, cfg.text_dim), torch.tensor([24, 3, 24, 10])
    a = small_model(**stream).predict(frames, text, lengths)
    b = small_model(**stream).predict(frames, text, lengths)  # a new model, same weights and noise seed
    assert torch.equal(a, b)
    alone = small_model(**stream).predict(frames[2:3], text[2:3], lengths[2:3])
    assert torch.allclose(alone, a[2:3], atol=1e-6)  # an answer does not depend on its batch
    other_seed = small_model(noise_seed=1, **stream)
    other_seed.load_state_dict(small_model(**stream).state_dict())
    assert not torch.equal(other_seed.predict(frames, text, lengths), a)


@pytest.mark.parametrize("reads_text", [True, False])
def test_reads_text_decides_whether_the_task_text_changes_the_outputs(reads_text):
    model = small_model(**V3, reads_text=reads_text)
    batch = random_batch(model.config)
    n = model.config.samples_per_episode
    frame_t, t = torch.ones(3, n), torch.zeros(3)
    video_a, value_a = model(batch.latents, frame_t, batch.text, batch.values, t, batch.valid)
    video_b, value_b = model(batch.latents, frame_t, -batch.text, batch.values, t, batch.valid)
    assert torch.equal(value_a, value_b) != reads_text
    assert torch.equal(video_a, video_b) != reads_text


def test_a_model_that_ignores_the_text_gets_zeros_without_the_sentence_encoder():
    from wvm.text import TextEncoder, ZeroText, text_encoder_for

    embed = text_encoder_for(WVMConfig(**SMALL, reads_text=False))
    assert isinstance(embed, ZeroText) and torch.equal(embed(["open the door", "x"]), torch.zeros(2, 384))
    assert isinstance(text_encoder_for(WVMConfig(**SMALL)), TextEncoder)


def _train(model, batch, steps: int, key: str) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(steps):
        torch.manual_seed(len(losses))
        loss, info = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(info[key])
    return losses


@VALUE_STREAMS
def test_a_tiny_training_run_lowers_the_value_loss(stream):
    torch.manual_seed(0)
    model = WorldValueModel(WVMConfig(**SMALL, **stream)).train()
    batch = random_batch(model.config, b=16)
    batch.values = torch.sigmoid(batch.latents.mean(dim=(2, 3, 4)) * 4)  # a function of the frames
    losses = _train(model, batch, 80, "value")
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


def test_stage_one_world_model_objective_lowers_its_loss():
    """Stage 1: no value loss; the video stream learns to denoise the future latents of
    episodes whose frames follow one another (here: a smooth drift per episode)."""
    torch.manual_seed(0)
    model = WorldValueModel(WVMConfig(**SMALL, value_loss_weight=0.0, clean_p=0.0)).train()
    batch = random_batch(model.config, b=16)
    start, step = torch.randn(16, 1, 4, 8, 8), torch.randn(16, 1, 4, 8, 8) * 0.1
    batch.latents = start + step * torch.arange(model.config.samples_per_episode).view(1, -1, 1, 1, 1)
    losses = _train(model, batch, 80, "video")
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    total, info = model.loss(batch)
    assert total.item() == pytest.approx(info["video"])  # the value loss does not count in stage 1


def test_static_baseline_reads_one_frame_at_a_time():
    torch.manual_seed(0)
    model = StaticValueModel(WVMConfig(**SMALL, kind="static")).eval()
    frames = torch.randint(0, 256, (2, 5, 64, 64, 3), dtype=torch.uint8)
    text = torch.randn(2, 384)
    a = model.predict(frames, text, torch.tensor([5, 5]))
    b = model.predict(frames[:, [4, 3, 2, 1, 0]], text, torch.tensor([5, 5]))
    assert torch.allclose(a, b.flip(1), atol=1e-6)


def test_checkpoint_round_trip(tmp_path):
    model = small_model(version="test-1")
    digest = save_model(tmp_path / "ckpt", model, model.config)
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.version == "test-1" and loaded.checkpoint_hash == digest
    assert checkpoint_identity(tmp_path / "ckpt") == ("test-1", digest)  # without loading the weights
    frames = torch.randint(0, 256, (2, model.config.samples_per_episode, 64, 64, 3), dtype=torch.uint8)
    text, lengths = torch.randn(2, 384), torch.tensor([24, 9])
    assert torch.equal(loaded.model.predict(frames, text, lengths), model.predict(frames, text, lengths))
    assert not (tmp_path / "ckpt.tmp").exists()


def test_latent_ood_score_is_the_distance_to_the_nearest_domain_and_survives_a_checkpoint(tmp_path):
    """ood_score "latent": fit on two domains of latents whose coordinates have known, unequal
    spreads, one of them shifted, the per-frame distance is |(z - c) / sigma| to the nearer
    domain's centre c, the reference is the training episodes' 99th percentile of their mean
    distance, and a round trip through a checkpoint keeps all of it."""
    from wvm.train import fit_latent_density

    model = small_model(ood_score="latent")
    c, s = model.config.latent_channels, model.config.latent_size
    dim = c * s * s
    sigma = torch.linspace(0.2, 3.0, dim)
    shift = torch.full((dim,), 50.0)
    noise = torch.randn(40000, dim, generator=torch.Generator().manual_seed(0)) * sigma
    latents = torch.cat([noise[:20000], noise[20000:] + shift]).reshape(-1, c, s, s)
    lengths, groups = [100] * 400, ["a"] * 200 + ["b"] * 200
    reference = fit_latent_density(model.autoencoder, latents, lengths, groups, seed=0, count=20000, shrinkage=0.0)
    assert model.autoencoder.ood_center.shape == (2, dim)
    probe = torch.zeros(4, dim)
    probe[0, 0], probe[1, -1], probe[2] = 1.0, 3.0, sigma  # one sigma along the narrowest and widest axes
    probe[3] = shift + sigma  # the same from the other domain's centre
    torch.testing.assert_close(model.autoencoder.latent_distance(probe.reshape(4, c, s, s)), torch.tensor([5.0, 1.0, dim**0.5, dim**0.5]), rtol=0.05, atol=0.05)
    # an episode's mean distance is near the chi distribution's mean, sqrt(dim); its 99th percentile a little above
    assert dim**0.5 * 0.95 < reference < dim**0.5 * 1.1
    model.config.ood_reference, model.config.ood_groups = reference, 2
    save_model(tmp_path / "ckpt", model, model.config)
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.config.ood_score == "latent" and loaded.config.ood_reference == reference
    torch.testing.assert_close(loaded.model.autoencoder.ood_whiten, model.autoencoder.ood_whiten)
    frames = torch.randint(0, 256, (2, 5, 64, 64, 3), dtype=torch.uint8)
    _, ood, _ = answer_episodes(loaded.model, frames, torch.randn(2, 384), torch.tensor([5, 3]))
    distance = model.autoencoder.latent_distance(model.encode_frames(frames))
    torch.testing.assert_close(ood, torch.stack([distance[0].mean(), distance[1, :3].mean()]) / reference)
    with pytest.raises(ValueError, match="ood_score"):
        WVMConfig(ood_score="pixels")


def test_checkpoint_that_does_not_match_its_config(tmp_path):
    model = small_model()
    save_model(tmp_path / "ckpt", model, model.config)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["video_width"] = 48
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    for read in (load_model, checkpoint_identity):  # the driver's cheap check refuses it too
        with pytest.raises(CheckpointError, match=r"weights do not match config\.json .*shape mismatch"):
            read(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"not safetensors")
    for read in (load_model, checkpoint_identity):
        with pytest.raises(CheckpointError, match="not a readable safetensors file"):
            read(tmp_path / "ckpt")


def test_an_ensemble_encodes_once_and_averages_its_members(tmp_path):
    """Seeds of one recipe (one config, one frozen encoder) combine into one checkpoint whose
    values are the members' mean and whose OOD score is the shared encoder's."""
    members = []
    for seed in range(3):
        model = small_model(**V3, version=f"seed-{seed}")
        if members:  # stage 2 keeps stage 1's encoder frozen: every seed has the same one
            model.autoencoder.load_state_dict(members[0].autoencoder.state_dict())
        torch.manual_seed(seed + 1)
        for p in model.value.parameters():  # members differ where training differs
            p.data.add_(0.3 * torch.randn_like(p))
        save_model(tmp_path / f"s{seed}", model, model.config)
        members.append(model)
    digest = save_ensemble([tmp_path / f"s{s}" for s in range(3)], tmp_path / "ens", "test-ens")
    loaded = load_model(tmp_path / "ens")
    assert isinstance(loaded.model, EnsembleValueModel) and loaded.config.members == 3
    assert loaded.version == "test-ens" and checkpoint_identity(tmp_path / "ens") == ("test-ens", digest)
    assert not any(k.startswith("members.") and ".autoencoder." in k for k in loaded.model.state_dict())  # stored once
    frames = torch.randint(0, 256, (2, 24, 64, 64, 3), dtype=torch.uint8)
    text, lengths = torch.randn(2, 384), torch.tensor([24, 9])
    each = torch.stack([m.predict(frames, text, lengths) for m in members])
    assert (each[0] - each[1]).abs().max() > 1e-3  # the members really differ
    assert torch.allclose(loaded.model.predict(frames, text, lengths), each.mean(0), atol=1e-6)
    answers = [answer_episodes(m, frames, text, lengths) for m in (members[0], loaded.model)]
    assert torch.equal(answers[0][1], answers[1][1])  # OOD: the shared encoder's
    each_success = torch.stack([answer_episodes(m, frames, text, lengths)[2] for m in members])
    assert torch.allclose(answers[1][2], each_success.mean(0), atol=1e-6)  # success: the members' mean


def test_an_ensemble_refuses_members_that_are_not_seeds_of_one_recipe(tmp_path):
    a, b, c = small_model(**V3), small_model(**V3), small_model(**V3, value_delta_weight=0.5)
    b.autoencoder.decoder[0].weight.data += 1.0  # another stage 1
    for name, model in zip("abc", (a, b, c)):
        save_model(tmp_path / name, model, model.config)
    with pytest.raises(CheckpointError, match=r"b: frozen encoder differs .* one stage 1"):
        save_ensemble([tmp_path / "a", tmp_path / "b"], tmp_path / "ens", "x")
    with pytest.raises(CheckpointError, match=r"c: config differs .*\['value_delta_weight'\]"):
        save_ensemble([tmp_path / "a", tmp_path / "c"], tmp_path / "ens", "x")
    with pytest.raises(CheckpointError, match="two or more"):
        save_ensemble([tmp_path / "a"], tmp_path / "ens", "x")
    assert not (tmp_path / "ens").exists()  # nothing half-written


# -- metrics (REFERENCE §2) -------------------------------------------------------------------


@pytest.mark.parametrize("kind,m,n", [("expert", -1, -1), ("hesitation", 10, 20), ("retry", 20, 26), ("failed", 15, 39)])
def test_rates_of_plus_one_zero_minus_one_give_the_ground_truth(kind, m, n):
    # working, paused and undoing steps summed as the "rates" value head does; padding ignored
    truth = ground_truth(40, kind, m, n)
    rates = torch.zeros(1, 48)
    rates[0, 1:40] = torch.from_numpy(np.sign(np.diff(truth)))
    rates[0, 40:] = 5.0  # padding: must not count
    valid = torch.arange(48)[None] < 40
    values = progress_from_rates(rates, torch.tensor([0.0 if kind == "failed" else 1.0]), valid)[0, :40].numpy()
    # exact, except retry, whose formula divides by T - 2x where the steps number T - 1 - 2x
    np.testing.assert_allclose(values, truth, atol=0.03 if kind == "retry" else 1e-6)
    assert values[-1] == pytest.approx(truth[-1], abs=1e-6)


def test_goal_progress_by_hand():
    # frames move evenly from A to B, back twice, then on to B; two padded samples must not count
    a, b = torch.zeros(8), torch.ones(8)
    path = [a + (b - a) * t for t in (0, 0.25, 0.5, 0.75, 0.5, 0.25, 0.5, 0.75, 1.0)]
    patches = torch.cat([torch.stack(path)[None, :, None].expand(1, 9, 4, 8), torch.full((1, 2, 4, 8), 9.0)], dim=1)
    valid = torch.arange(11)[None] < 9
    features = goal_progress(patches, valid)[0]
    # closed: 1 - |x_i - B| / |A - B|; step: its change times the 8 steps (0.25 * 8 = 2), clamped to +-3
    np.testing.assert_allclose(features[:9, 0], [0, 0.25, 0.5, 0.75, 0.5, 0.25, 0.5, 0.75, 1.0], atol=1e-3)
    np.testing.assert_allclose(features[:9, 1], [0, 2, 2, 2, -2, -2, 2, 2, 2], atol=1e-2)
    assert features[9:].abs().max() == 0


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_dropout_acts_in_training_only(dropout):
    model = small_model(**V3, dropout=dropout)
    batch = random_batch(model.config)
    n = model.config.samples_per_episode
    inputs = (batch.latents, torch.ones(3, n), batch.text, batch.values, torch.zeros(3), batch.valid)
    assert torch.equal(model(*inputs)[1], model(*inputs)[1])  # eval: deterministic
    model.train()
    assert torch.equal(model(*inputs)[1], model(*inputs)[1]) == (dropout == 0)


def test_frame_progress_is_cross_fitted():
    """Each per-frame regressor learns only from its own half of the tasks; in training the
    value stream reads the other half's regressor (so, estimates for a task it never saw), at
    inference the mean of both, and its loss never reaches either."""
    model = small_model(**V3, value_reads_progress="level").train()
    batch = random_batch(model.config, b=4)
    batch.fold = torch.zeros(4, dtype=torch.long)  # every episode in fold 0
    loss, info = model.loss(batch)
    loss.backward()
    own, other = model.value.progress.heads
    assert all(p.grad.abs().sum() > 0 for p in own.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in other.parameters())
    estimates = torch.stack([torch.zeros(2, 3), torch.ones(2, 3)], dim=-1).requires_grad_()
    np.testing.assert_allclose(FrameProgress.read(estimates, torch.tensor([0, 1])), [[1, 1, 1], [0, 0, 0]])
    np.testing.assert_allclose(FrameProgress.read(estimates, None), 0.5)
    assert not FrameProgress.read(estimates, None).requires_grad


def test_state_features_by_hand():
    """An arm moving evenly along a line, pausing, retracing two steps and redoing them; the
    same motion in other units and a wider, zero-padded state; a video-only episode."""
    line = np.array([0, 1, 2, 3, 3.02, 3.04, 2.1, 1.1, 2, 3, 4, 5])  # positions at 12 samples
    one = torch.tensor(line, dtype=torch.float32)[:, None] * torch.tensor([1.0, 0.5, 0, 0, 0, 0])
    states = torch.stack([one, one * 3.0, torch.full((12, 6), float("nan"))])
    valid = torch.ones(3, 12, dtype=torch.bool)
    f = state_features(states, valid)
    np.testing.assert_allclose(f[0], f[1], atol=1e-5)  # units and zero padding do not matter
    assert f[2].abs().max() == 0  # no state: every feature 0, the "has state" flag too
    speed, covered, _, _, retrace, lag, known = f[0].T.numpy()
    steps = np.abs(np.diff(line, prepend=0))
    np.testing.assert_allclose(speed, steps / (steps.sum() / 11), atol=1e-4)  # over the mean of 11 steps
    np.testing.assert_allclose(covered, np.cumsum(steps) / steps.sum(), atol=1e-5)  # a clock that stops in the pause
    assert speed[4:6].max() < 0.05
    # back on states held two or more samples before: pause, retrace and redo read near 0
    assert retrace[5:10].max() < 0.15 and retrace[:2].min() == 5 and retrace[10:].min() > 1
    np.testing.assert_allclose(lag[6:10] * 11, [4, 6, 6, 6], atol=1e-5)  # undoing: the state recedes; redoing: keeps pace
    assert known.min() == 1
    # looking ahead: the first 7 are unchanged; the undo (samples 5-6) is revisited by the redo,
    # the redo and what follows it are not
    g = state_features(states, valid, ahead=True)
    torch.testing.assert_close(g[..., :7], f)
    assert g[2].abs().max() == 0
    coming_back, ahead = g[0, :, 7:].T.numpy()
    assert coming_back[5:7].max() < 0.15 and coming_back[9:].min() > 1 and coming_back[10:].min() == 5
    np.testing.assert_allclose(ahead[5:7] * 11, [4, 2], atol=1e-5)  # 3.04 at sample 9, 2.1 at sample 8
    assert ahead[10:].max() == 0


@pytest.mark.parametrize("ahead", [False, True])
def test_the_robot_state_reaches_the_values_only_when_the_model_reads_it(ahead):
    config = dict(**V3, value_reads_state=True, value_reads_state_ahead=ahead)
    model = small_model(**config)
    with torch.no_grad():  # untrained rates may all be negative, and every value clamps to 0
        model.value.head[-1].bias.fill_(1.0)
    batch = random_batch(model.config)
    n = model.config.samples_per_episode
    lengths = torch.tensor([n // 2, n, n])
    moving = torch.cumsum(torch.rand(3, n, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    still = moving.clone()
    still[:, 5:12] = still[:, 5:6]
    latents = batch.latents
    assert not torch.allclose(model.predict_latents(latents, batch.text, lengths, moving), model.predict_latents(latents, batch.text, lengths, still))
    no_state = torch.full_like(moving, float("nan"))
    torch.testing.assert_close(model.predict_latents(latents, batch.text, lengths, no_state), model.predict_latents(latents, batch.text, lengths, None))
    plain = small_model(**V3)
    torch.testing.assert_close(plain.predict_latents(latents, batch.text, lengths, moving), plain.predict_latents(latents, batch.text, lengths))
    batch.states = moving
    batch.states[1] = float("nan")  # one episode without a state in training
    loss, _ = model.train().loss(batch)
    loss.backward()
    width = 9 if ahead else 7
    assert torch.isfinite(loss) and model.value.frame_in.weight.grad[:, -1 - width : -1].abs().sum() > 0
    with pytest.raises(ValueError, match="need value_reads_state"):
        small_model(**V3, value_reads_state_ahead=True)


def test_step_classes_by_hand():
    """Work, pause and undo from the ground truth's steps (times the episode's steps); the
    first sample and padding have no step."""
    values = torch.tensor([[0.0, 0.25, 0.5, 0.5, 0.25, 0.5, 0.75, 9.0]])  # 7 real samples, 6 steps
    valid = torch.arange(8)[None] < 7
    assert step_classes(values, valid).tolist() == [[-1, 0, 0, 1, 2, 0, 0, -1]]


def train_part(model: WorldValueModel, batch: Batch, part: torch.nn.Module, steps: int) -> None:
    """Adam steps of the model's whole loss on one part's weights only."""
    optimizer = torch.optim.Adam(part.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        model.loss(batch)[0].backward()
        optimizer.step()


def test_state_rates_learn_pauses_and_undos_from_the_state_alone():
    """value_reads_state_rates: StateRates trains on the ground truth's steps (its own loss term;
    the value tokens read its probabilities detached) and tells a still arm and a retraced path
    from steady motion with no frames to go on; an episode without a state is not a target."""
    model = small_model(**V3, value_reads_state=True, value_reads_state_rates=True)
    batch = random_batch(model.config)
    n = model.config.samples_per_episode
    b = batch.values.shape[0]
    batch.valid = torch.ones(b, n, dtype=torch.bool)
    path = torch.zeros(b, n, 3)
    path[..., 0] = torch.arange(n, dtype=torch.float32)
    values = torch.arange(n, dtype=torch.float32).expand(b, n).clone()
    path[0, 8:14], values[0, 8:14] = path[0, 7], values[0, 7]  # a pause
    path[1, 8:12] = path[1, 7] - torch.arange(1, 5.0)[:, None] * torch.tensor([1.0, 0, 0])  # an undo, then the redo
    path[1, 12:] = path[1, 8:12][-1] + torch.arange(1, n - 11.0)[:, None] * torch.tensor([1.0, 0, 0])
    values[1, 8:12] = values[1, 7] - torch.arange(1, 5.0)
    values[1, 12:] = values[1, 11] + torch.arange(1, n - 11.0)
    batch.values = values / values[:, -1:]
    batch.states = path
    batch.states[2] = float("nan")  # no state: no target
    loss, info = model.train().loss(batch)
    loss.backward()
    assert "state_steps" in info and model.value.state_rates.net[0].weight.grad.abs().sum() > 0
    train_part(model, batch, model.value.state_rates, steps=150)
    with torch.no_grad():
        judged = model.value.state_rates(batch.states, batch.valid).argmax(-1)
    assert judged[0, 9:13].eq(1).all() and judged[1, 9:11].eq(2).all() and judged[0, 2:6].eq(0).all()


def test_state_success_judges_the_whole_episode_from_the_state_alone():
    """value_state_success: StateSuccess trains on whether the ground truth reaches 1 (its own
    loss term, episodes with a state only) and tells a success from an arm that drifts off once
    the work stops; its verdict moves the success probability, and without a state it does not."""
    model = small_model(**V3, value_reads_state=True, value_reads_state_rates=True, value_state_success=True)
    batch = random_batch(model.config, b=4)
    b, n = batch.values.shape
    batch.valid = torch.ones(b, n, dtype=torch.bool)
    ramp = torch.arange(n, dtype=torch.float32) / (n - 1)
    path = torch.zeros(b, n, 4)
    path[..., 0] = ramp * 10  # steady work to the end, then (rows 2, 3) a drift once the work stops
    path[2:, 14:, 1] = (torch.arange(n - 14.0) + 1) * 3
    path[2:, 14:, 0] = path[2:, 13:14, 0]
    batch.values = torch.stack([ramp, ramp, ramp.clamp(max=ramp[13]), ramp.clamp(max=ramp[13])])
    batch.states = path
    loss, info = model.train().loss(batch)
    loss.backward()
    assert "state_success" in info and model.value.state_success.out.weight.grad.abs().sum() > 0
    train_part(model, batch, model.value.state_success, steps=60)
    with torch.no_grad():
        verdict = model.value.state_success(batch.states, batch.valid)
        _, _, success, *_ = model.eval().joint(batch.latents, torch.ones(b, n), batch.text, batch.values, torch.ones(b), batch.valid, states=batch.states)
        _, _, blind, *_ = model.joint(batch.latents, torch.ones(b, n), batch.text, batch.values, torch.ones(b), batch.valid, states=None)
    assert verdict[:2].min() > 0 > verdict[2:].max()
    assert success[:2].min() > success[2:].max()  # the verdict moves the success probability...
    assert not torch.allclose(success, blind)  # ...which without a state is the frames' alone
    assert StateSuccess.loss(verdict, torch.tensor([True, True, False, False]), torch.tensor([False] * 4)) == 0
    with pytest.raises(ValueError, match="value_state_success needs"):
        small_model(**V3, value_state_success=True)


def test_state_read_only_through_state_rates_judgement():
    """value_reads_state_features false: the tokens' input has no state_features columns, and
    the state still moves the values, through StateRates' probabilities alone."""
    both = small_model(**V3, value_reads_state=True, value_reads_state_rates=True)
    judged = small_model(**V3, value_reads_state=True, value_reads_state_rates=True, value_reads_state_features=False)
    assert both.value.frame_in.in_features - judged.value.frame_in.in_features == STATE_FEATURES
    batch = random_batch(judged.config)
    b, n = batch.values.shape
    states = torch.cumsum(torch.rand(b, n, 4, generator=torch.Generator().manual_seed(3)), dim=1)
    frames = torch.randint(0, 255, (b, n, 64, 64, 3), dtype=torch.uint8)
    lengths = batch.valid.sum(1)
    judged.eval()
    torch.nn.init.normal_(judged.value.state_rates.net[2].weight, std=3.0)  # a judgement that varies with the state
    moved = judged.predict(frames, batch.text, lengths, states) - judged.predict(frames, batch.text, lengths, states.flip(1))
    assert moved.abs().max() > 1e-4
    torch.nn.init.zeros_(judged.value.state_rates.net[2].weight)
    torch.nn.init.zeros_(judged.value.state_rates.net[2].bias)  # the same judgement whatever the state
    still = judged.predict(frames, batch.text, lengths, states) - judged.predict(frames, batch.text, lengths, states.flip(1))
    assert still.abs().max() < 1e-6
    with pytest.raises(ValueError, match="needs value_reads_state_rates"):
        small_model(**V3, value_reads_state=True, value_reads_state_features=False)


def test_cross_fitted_state_rates_read_the_judge_that_never_saw_the_task():
    """value_state_rates_crossfit: two judges, each trained on its fold's episodes only; in
    training an episode's tokens read the other fold's judge, at inference the mean of both."""
    model = small_model(**V3, value_reads_state=True, value_reads_state_rates=True, value_state_rates_crossfit=True)
    batch = random_batch(model.config)
    b, n = batch.values.shape
    batch.states = torch.cumsum(torch.rand(b, n, 4, generator=torch.Generator().manual_seed(2)), dim=1)
    batch.fold = torch.tensor([0] * (b - 1) + [1])
    logits = model.value.state_rates(batch.states, batch.valid)
    assert logits.shape == (b, n, 2, 3)
    p = logits.softmax(-1)
    read = StateRates.read(logits, batch.fold)
    torch.testing.assert_close(read[0], p[0, :, 1])
    torch.testing.assert_close(read[-1], p[-1, :, 0])
    torch.testing.assert_close(StateRates.read(logits, None), p.mean(2))
    model.train().loss(batch)[0].backward()  # the one fold-1 episode is all the second judge learns from
    grads = [net[0].weight.grad.abs().sum() for net in (model.value.state_rates.net, model.value.state_rates.other)]
    assert grads[0] > 0 and grads[1] > 0
    batch.fold = torch.zeros(b, dtype=torch.long)
    model.zero_grad()
    model.loss(batch)[0].backward()
    assert model.value.state_rates.other[0].weight.grad is None or model.value.state_rates.other[0].weight.grad.abs().sum() == 0
    with pytest.raises(ValueError, match="needs value_reads_state_rates"):
        small_model(**V3, value_reads_state=True, value_state_rates_crossfit=True)


def test_progress_features_by_hand():
    # an estimate rising, falling back, rising again; 4 real samples (3 steps), one padded
    progress = torch.tensor([[0.1, 0.4, 0.2, 0.9, 7.0]])
    features = progress_features(progress, torch.arange(5)[None] < 4)[0]
    np.testing.assert_allclose(features[:4, 0], [0.1, 0.4, 0.2, 0.9], atol=1e-6)
    np.testing.assert_allclose(features[:4, 1], [0, 0.9, -0.6, 2.1], atol=1e-5)  # change x 3 steps
    np.testing.assert_allclose(features[:4, 2], [0, 0.3, 0.1, 0.8], atol=1e-6)
    assert features[4].abs().max() == 0
    np.testing.assert_allclose(progress_features(progress, torch.arange(5)[None] < 4, "change")[0, :, 0], features[:, 1])


def test_ground_truth_by_hand():
    np.testing.assert_allclose(ground_truth(5, "expert"), [0, 0.25, 0.5, 0.75, 1])
    # hesitation T=8, [m, n] = [2, 4], x=2: v_m = v_n = 2 / (8 - 1 - 2) = 0.4
    np.testing.assert_allclose(ground_truth(8, "hesitation", 2, 4), [0, 0.2, 0.4, 0.4, 0.4, 0.6, 0.8, 1.0])
    # retry T=10, [m, n] = [4, 6], x=2: v_m = 4 / 6, v_n = 2 / 6
    gt = ground_truth(10, "retry", 4, 6)
    np.testing.assert_allclose(gt[[0, 4, 5, 6, 9]], [0, 4 / 6, 3 / 6, 2 / 6, 1])
    # failed T=6, work stops at m=2: the expert pace t/5 until frame 2, then held at 0.4
    np.testing.assert_allclose(ground_truth(6, "failed", 2, 5), [0, 0.2, 0.4, 0.4, 0.4, 0.4])
    with pytest.raises(ValueError, match="must end at its last frame"):
        ground_truth(6, "failed", 2, 4)


def test_failure_auroc_by_hand():
    # successes 0.9, 0.8, 0.3 vs failures 0.5, 0.1: pairs won 2 + 2 + 1 = 5 of 6
    quality = np.array([0.9, 0.5, 0.8, 0.1, 0.3])
    succeeded = np.array([True, False, True, False, True])
    assert failure_auroc(quality, succeeded) == pytest.approx(5 / 6)
    assert auroc([1.0, 1.0], [1.0]) == 0.5  # ties count half: a constant score is chance
    assert auroc([0.2], [0.9]) == 0.0 and np.isnan(failure_auroc(quality, np.ones(5, bool)))


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
    assert model.predict(frames, torch.randn(1, 384), torch.tensor([24])).shape == (1, 24)
    with pytest.raises(ValueError, match="expected 'small' or 'package.module:factory'"):
        small_model(backbone="wan2.2")


def test_the_fixtures_shipped_ground_truth_is_what_ground_truth_computes():
    # the labels that came with metaworld_mini were computed elsewhere: ours must agree exactly
    import pyarrow.parquet as pq

    from conftest import METAWORLD_LABELS

    table = pq.read_table(METAWORLD_LABELS).to_pandas()
    assert set(table["kind"]) == {"expert", "hesitation", "retry"}
    for index, episode in table.groupby("episode_index"):
        episode = episode.sort_values("frame_index")
        kind, m, n = episode["kind"].iloc[0], int(episode["seg_start"].iloc[0]), int(episode["seg_end"].iloc[0])
        np.testing.assert_allclose(ground_truth(len(episode), kind, m, n), episode["gt_progress"], atol=1e-9, err_msg=f"episode {index}")
