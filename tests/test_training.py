"""`wvm train`: the two-stage recipe on a real episode store (metaworld_mini with its ground
truth): stage 1 trains the world model alone, stage 2 starts from its weights, the ablation
configs do what they say, and a killed run resumes from checkpoints/latest."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import METAWORLD_LABELS, METAWORLD_MINI
from pipelines.engines.base import LocalEngine
from pipelines.ingest import IngestConfig, run_ingest
from schemas.labels import OOD_TRUST_LIMIT
from wvm.checkpoint import CheckpointError, load_model, save_ensemble
from wvm.data import load_episodes
from wvm.model import answer_episodes
from wvm.train import DataSpec, TrainConfig, Trainer, train

pytestmark = pytest.mark.slow

# stage 2 as shipped reads other value-stream inputs than stage 1 built: those layers start fresh
V3 = dict(value_reads_time=False, value_reads_motion=True, value_reads_distances=True, value_head="rates")
TINY_MODEL = dict(ae_widths=(16, 16, 16), latent_channels=4, video_width=32, value_width=16, depth=2, heads=2, head_dim=8)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "store"
    run_ingest(IngestConfig(str(METAWORLD_MINI), str(out)), LocalEngine(), progress=False)
    return out


def tiny_config(store, **overrides) -> TrainConfig:
    model = {**TINY_MODEL, **overrides.pop("model", {})}
    base = dict(data=[DataSpec(str(store), str(METAWORLD_LABELS))], model=model, threads=1, ae_steps=6, ae_batch=8,
                steps=6, batch_size=4, aug_variants=2, checkpoint_every=3, log_every=1)  # fmt: skip
    return TrainConfig(**{**base, **overrides})


def video_state(model) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {k: v.clone() for k, v in state.items() if k.startswith("video.") or ".video." in k}


def test_stage_two_starts_from_stage_one(store, tmp_path):
    stage1 = train(tiny_config(store, model={"value_loss_weight": 0.0, "clean_p": 0.0, "version": "s1"}), tmp_path / "s1", progress=False)
    log = [json.loads(line) for line in (tmp_path / "s1" / "log.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in log} >= {"autoencoder", "world model", "done"}
    first = load_model(stage1)
    assert first.config.ood_reference > 0  # the OOD reference comes with the encoder

    # frozen video stream: stage 1's video weights come through unchanged; the value stream
    # (here with its per-frame progress regressors, which stage 1 lacks) learns
    frozen_model = {"version": "s2-frozen", **V3, "value_reads_progress": "level"}
    frozen = train(tiny_config(store, model=frozen_model, init_from=str(stage1), freeze_video=True), tmp_path / "frozen", progress=False)
    second = load_model(frozen)
    for key, value in video_state(first.model).items():
        assert torch.equal(second.model.state_dict()[key], value), key
    assert not torch.equal(second.model.value.head[1].weight, first.model.value.head[1].weight)
    assert second.config.latent_mean == first.config.latent_mean and second.config.ood_reference == first.config.ood_reference
    frozen_log = [json.loads(line) for line in (tmp_path / "frozen" / "log.jsonl").read_text().splitlines()]
    assert "autoencoder" not in {r["phase"] for r in frozen_log}
    stage2 = [r for r in frozen_log if r["phase"] == "wvm"]
    assert stage2 and all(r["progress"] > 0 for r in stage2)  # the trainer gave every batch its task halves

    # ood_score "latent" from a stage 1 without it: the run fits the latent Gaussian on its own
    # frames; its training episodes score about 1 or less, frames of noise far above the flag
    latent = load_model(train(tiny_config(store, model={**frozen_model, "ood_score": "latent"}, init_from=str(stage1), freeze_video=True, steps=2), tmp_path / "latent", progress=False))
    assert latent.config.ood_reference > 0 and latent.model.autoencoder.ood_whiten.abs().sum() > 0
    episodes = load_episodes(str(store), str(METAWORLD_LABELS))
    trained = torch.stack([torch.from_numpy(e.frames[:: max(1, len(e.frames) // 8)][:8]) for e in episodes])
    noise = torch.randint(0, 256, trained.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    text, lengths = torch.zeros(len(trained), 384), torch.full((len(trained),), trained.shape[1])
    assert answer_episodes(latent.model, trained, text, lengths)[1].max() < 1.5
    assert answer_episodes(latent.model, noise, text, lengths)[1].min() > OOD_TRUST_LIMIT
    # `wvm train --refit-ood`: the same fit for a checkpoint trained without it (here the frozen
    # run's), as training does it: the latent run's statistics exactly, its weights untouched
    latent_config = tiny_config(store, model={**frozen_model, "ood_score": "latent"}, init_from=str(stage1), freeze_video=True)
    refit = load_model(Trainer(latent_config, tmp_path / "refit", progress=False).refit_ood(frozen))
    assert refit.config.ood_reference == latent.config.ood_reference and refit.config.ood_groups == latent.config.ood_groups == 1
    assert torch.equal(refit.model.autoencoder.ood_whiten, latent.model.autoencoder.ood_whiten)
    assert all(torch.equal(v, second.model.state_dict()[k]) for k, v in refit.model.state_dict().items() if not k.startswith("autoencoder.ood_"))

    # the full stage 2 trains the video stream on from stage 1's weights
    joint = load_model(train(tiny_config(store, model={"version": "s2", **V3}, init_from=str(stage1)), tmp_path / "joint", progress=False))
    assert torch.equal(joint.model.autoencoder.encoder[0].weight, first.model.autoencoder.encoder[0].weight)
    changed = [k for k, v in video_state(first.model).items() if not torch.equal(joint.model.state_dict()[k], v)]
    assert changed

    # video_lr_scale: the same run with the video stream at a tenth of the learning rate moves
    # its weights far less (AdamW's steps scale with the rate)
    gentle = load_model(train(tiny_config(store, model={"version": "s2", **V3}, init_from=str(stage1), video_lr_scale=0.1), tmp_path / "gentle", progress=False))

    def moved(model) -> float:
        return sum(float((model.state_dict()[k] - v).abs().sum()) for k, v in video_state(first.model).items())

    assert 0 < moved(gentle.model) < 0.3 * moved(joint.model)
    with pytest.raises(ValueError, match="video_lr_scale"):
        tiny_config(store, video_lr_scale=0.0)

    # freeze_video_layers: the embedding and the lowest layer's video half stay stage 1's, the layer above trains
    lower = load_model(train(tiny_config(store, model={"version": "s2", **V3}, init_from=str(stage1), freeze_video_layers=1), tmp_path / "lower", progress=False))
    moved_keys = {k for k, v in video_state(first.model).items() if not torch.equal(lower.model.state_dict()[k], v)}
    assert moved_keys and all(k.startswith("layers.1.video.") for k in moved_keys), sorted(moved_keys)
    for bad in [dict(freeze_video_layers=2), dict(freeze_video_layers=1, freeze_video=True), dict(freeze_video_layers=1, init_from=None)]:
        with pytest.raises(ValueError, match="freeze_video_layers"):
            tiny_config(store, **{"init_from": str(stage1), **bad})

    # another seed of the same stage 2 shares the frozen encoder: the two combine into an ensemble
    other = train(tiny_config(store, model={"version": "s2", **V3}, init_from=str(stage1), seed=1), tmp_path / "joint_s1", progress=False)
    save_ensemble([tmp_path / "joint" / "final", other], tmp_path / "ensemble", "s2-ensemble")
    assert load_model(tmp_path / "ensemble").config.members == 2
    with pytest.raises(CheckpointError, match="train each member as its own run"):
        train(tiny_config(store, model={"members": 2}), tmp_path / "members", progress=False)


def test_a_stopped_run_resumes_where_it_stopped(store, tmp_path):
    config = tiny_config(store, model={"version": "resume"})
    uninterrupted = load_file(str(train(config, tmp_path / "whole", progress=False) / "model.safetensors"))
    # the same run stopped after 3 value steps (a checkpoint), then rerun with the full budget
    train(tiny_config(store, model={"version": "resume"}, steps=4), tmp_path / "split", progress=False)
    latest = json.loads((tmp_path / "split" / "checkpoints" / "latest" / "trainer.json").read_text())
    assert latest == {**latest, "phase": "value", "step": 4}
    resumed = load_file(str(train(config, tmp_path / "split", progress=False) / "model.safetensors"))
    for key in uninterrupted:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=1e-4, atol=1e-5)



def test_every_camera_of_a_store_trains_as_its_own_view_of_the_episode(tmp_path):
    """DataSpec camera "all": each camera's frames become a training episode with the same
    ground truth, so a model learns one motion from several viewpoints."""
    import numpy as np

    from pipelines.sources import open_source
    from pipelines.sources.lerobot import LeRobotV3Writer
    from wvm.data import EVERY_CAMERA, load_episodes

    # a two-camera dataset: metaworld_mini's frames and the same frames mirrored
    source = open_source(str(METAWORLD_MINI))
    camera = source.default_camera()
    writer = LeRobotV3Writer(root=str(tmp_path / "two"), fps=int(source.fps), robot_type="sawyer",
                             cameras={"observation.images.a": source.camera_shape(camera), "observation.images.b": source.camera_shape(camera)},
                             state_dim=4, action_dim=4)  # fmt: skip
    for episode in list(source.episodes())[:2]:
        table = source.read_frames(episode)
        frames = np.stack(list(source.decode(episode, camera, table, np.arange(len(table)))))
        state = np.zeros((len(frames), 4), np.float32)
        writer.add_episode({"observation.images.a": frames, "observation.images.b": frames[:, :, ::-1].copy()}, state, state, episode.task)
    writer.close()
    run_ingest(IngestConfig(str(tmp_path / "two"), str(tmp_path / "store")), LocalEngine(), progress=False)

    default = load_episodes(str(tmp_path / "store"))
    every = load_episodes(str(tmp_path / "store"), camera=EVERY_CAMERA)
    assert len(default) == 2 and len(every) == 4
    for one, (a, b) in zip(default, zip(every[::2], every[1::2]), strict=True):
        assert a.source.endswith("/observation.images.a") and b.source.endswith("/observation.images.b")
        assert (a.values == one.values).all() and (b.values == one.values).all() and a.task == b.task == one.task
        assert (a.frames == one.frames).all()
        mirrored = np.abs(b.frames.astype(int) - a.frames[:, :, ::-1]).mean()  # video codecs are lossy
        assert mirrored < 3 < np.abs(b.frames.astype(int) - a.frames).mean()


def test_edit_lag_kinds_must_be_edit_kinds(tmp_path):
    """A misspelt kind would silently coast nothing: the config refuses it."""
    assert tiny_config(tmp_path / "store", edit_lag=2, edit_lag_kinds=["retry"]).edit_lag_kinds == ["retry"]
    with pytest.raises(ValueError, match="edit_lag_kinds"):
        tiny_config(tmp_path / "store", edit_lag=2, edit_lag_kinds=["retries"])


def test_reversed_episodes_need_a_model_that_ignores_the_task_text(tmp_path):
    """A reversed episode keeps its task's text, which then names the opposite task."""
    with pytest.raises(ValueError, match="reverse_p"):
        tiny_config(tmp_path / "store", reverse_p=0.3)
    assert tiny_config(tmp_path / "store", reverse_p=0.3, model={"reads_text": False}).reverse_p == 0.3


def test_training_and_eval_read_the_labels_own_progress(tmp_path, store):
    """A rendered failure that pauses before it stops (datagen --failed-detour) holds in its pause,
    which the failed kind's formula for its segment would not: training and `wvm eval` take the
    labels table's progress, and a table that does not fit its episode is a clear error."""
    import re

    import numpy as np
    import pyarrow.parquet as pq

    from pipelines.errors import WvmError
    from schemas import ground_truth as gt
    from wvm.data import load_episodes
    from wvm.evaluate import load_bench

    table = pq.read_table(METAWORLD_LABELS).to_pandas()
    first = table[gt.EPISODE_INDEX] == table[gt.EPISODE_INDEX].min()
    T = int(first.sum())
    stop, held = T // 2, 0.4
    detour = np.concatenate([np.linspace(0, 0.2, 4), np.full(3, 0.2), np.linspace(0.2, held, stop - 6)[1:], np.full(T - stop, held)])
    assert len(detour) == T
    table.loc[first, gt.GT_PROGRESS] = detour
    table.loc[first, gt.KIND], table.loc[first, gt.SEG_START], table.loc[first, gt.SEG_END] = "failed", stop, T - 1
    labels = tmp_path / "detour.labels.parquet"
    table.to_parquet(labels)

    trained = {e.source.split("#")[1].split("/")[0]: e for e in load_episodes(str(store), str(labels))}
    np.testing.assert_allclose(trained[str(table[gt.EPISODE_INDEX].min())].values, detour, atol=1e-6)
    scored = {e.index: e for e in load_bench(str(METAWORLD_MINI), str(labels))}
    assert scored[int(table[gt.EPISODE_INDEX].min())].kind == "failed"
    np.testing.assert_allclose(scored[int(table[gt.EPISODE_INDEX].min())].truth, detour)

    table[~(first & (table[gt.FRAME_INDEX] == T - 1))].to_parquet(labels)  # one label short
    short = f"{labels}: episode {table[gt.EPISODE_INDEX].min()} of {METAWORLD_MINI} has {T - 1} labels for {T} frames"
    with pytest.raises(WvmError, match=re.escape(short)):
        load_bench(str(METAWORLD_MINI), str(labels))
