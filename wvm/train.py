"""`wvm train`: the frame autoencoder first, then the two-stream model on frozen latents.

The WVM recipe has two stages, each one `wvm train` run (issue #10):
1. world-model pretraining: `value_loss_weight` 0, so only the video stream learns, to predict
   the rest of an episode's latents from its start, on every video we have (labels not needed);
2. joint training: `init_from` the stage-1 checkpoint; the value stream joins. The paper's
   ablations are configs: no stage 1 ("video stream from scratch"), `freeze_video`, and
   `video_loss_weight` 0 ("no video loss"); `freeze_video_layers` keeps only the lower layers.

A run directory holds the config, `log.jsonl` (one line per logged step), `checkpoints/latest`
(model + optimizer + RNG, for resume) and `final` (the deliverable checkpoint).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from schemas.inference import pad_state
from wvm.checkpoint import MODEL_FILE, CheckpointError, load_model, read_config, save_model
from wvm.data import EDIT_KINDS, EpisodeSampler, TrainingEpisode, augment, load_episodes
from wvm.model import Batch, WVMConfig, build_model, preprocess
from wvm.text import TextEncoder

log = logging.getLogger(__name__)
REFIT = "autoencoder.ood_"  # the OOD score's statistics: each run fits its own, never a donor's


@dataclass
class DataSpec:
    store: str  # an episode store (from `wvm ingest`)
    labels: str | None = None  # ground-truth labels; None: expert data, target t/(T-1)
    camera: str | None = None  # default: the first camera; "all" (wvm.data.EVERY_CAMERA): every camera


@dataclass
class TrainConfig:
    data: list[DataSpec]
    model: dict = field(default_factory=dict)  # WVMConfig fields to override
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    ae_steps: int = 3000
    ae_batch: int = 128
    ae_lr: float = 2e-3
    steps: int = 8000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 200
    aug_variants: int = 4  # augmented views per episode, encoded once
    init_autoencoder: str | None = None  # reuse this checkpoint's frozen encoder, skip that phase
    init_from: str | None = None  # start from all of this checkpoint's weights (stage 2 from stage 1)
    freeze_video: bool = False  # train the value stream only (the "frozen video stream" ablation)
    # keep the video stream's embedding and its half of the lowest N joint layers at their
    # stage-1 weights and train the layers above: stage 1's features without its whole stream
    freeze_video_layers: int = 0
    # the video stream learns at this fraction of `lr` in joint training: between a frozen
    # stage-1 world model (0, `freeze_video`) and one the value loss may rewrite freely (1)
    video_lr_scale: float = 1.0
    edit_p: float = 0.5  # expert episodes spliced with a pause, retry or failure (wvm.data.edit_episode)
    warp_p: float = 0.0  # episodes read at a randomly changing speed (wvm.data.warped_positions)
    edit_lag: int = 0  # edited frames turn up to this many steps after the label does (momentum)
    edit_lag_kinds: tuple[str, ...] = EDIT_KINDS  # the edits that coast (wvm.data.EDIT_KINDS)
    reverse_p: float = 0.0  # successful episodes played backwards as their reverse task (wvm.data.reverse_episode)
    failed_edit_p: float = 0.0  # failed episodes given a pause or undo before they stop (wvm.data.edit_failed_episode)
    text_dropout: float = 0.1
    # episodes read as if they had no robot state (value_reads_state): the model must also
    # label video-only datasets
    state_dropout: float = 0.25
    checkpoint_every: int = 500
    log_every: int = 50

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        raw = json.loads(Path(path).read_text())
        raw["data"] = [DataSpec(**d) for d in raw["data"]]
        return cls(**raw)

    def __post_init__(self):
        if not 0 < self.video_lr_scale <= 1:
            raise ValueError(f"video_lr_scale must be in (0, 1] (freeze_video for 0), got {self.video_lr_scale}")
        if self.freeze_video_layers and (self.freeze_video or not self.init_from):
            raise ValueError("freeze_video_layers keeps stage 1's lower layers: it needs init_from and not freeze_video (which freezes them all)")
        if not 0 <= self.freeze_video_layers < WVMConfig.from_dict(self.model).depth:
            raise ValueError(f"freeze_video_layers must leave a layer to train (0 to depth - 1), got {self.freeze_video_layers}")
        if unknown := set(self.edit_lag_kinds) - set(EDIT_KINDS):
            raise ValueError(f"edit_lag_kinds must be among {EDIT_KINDS}, got {sorted(unknown)}")
        if self.reverse_p and self.model.get("reads_text", True):
            # a reversed episode keeps its task's text, which then names the opposite task
            raise ValueError("reverse_p needs a model that does not read the task text (model.reads_text false)")


class Trainer:
    def __init__(self, config: TrainConfig, out: str | Path, progress: bool = True):
        self.config, self.out, self.progress = config, Path(out), progress
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "train_config.json").write_text(json.dumps(asdict(config), indent=2))
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = torch.device(config.device)
        self.model_config = WVMConfig.from_dict(config.model)
        if self.model_config.members > 1:
            raise CheckpointError("model.members > 1: train each member as its own run (one --seed each), then combine them with `wvm ensemble`")
        self.log_file = open(self.out / "log.jsonl", "a")

    # -- bookkeeping -------------------------------------------------------------------------

    def _log(self, record: dict) -> None:
        self.log_file.write(json.dumps(record) + "\n")
        self.log_file.flush()

    def _autocast(self):
        enabled = self.config.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _save(self, name: str, model, optimizer, phase: str, step: int, rng: np.random.Generator) -> None:
        directory = self.out / "checkpoints" / name
        save_model(directory, model, self.model_config)
        tensors = {"torch_rng": torch.get_rng_state()}
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for i, param in enumerate(params):
            for key, value in optimizer.state.get(param, {}).items():
                tensors[f"optim.{i}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(directory / "trainer.safetensors"))
        (directory / "trainer.json").write_text(json.dumps({"phase": phase, "step": step, "numpy_rng": rng.bit_generator.state}))

    def _resume(self):
        directory = self.out / "checkpoints" / "latest"
        if not (directory / "trainer.json").exists():
            return None
        state = json.loads((directory / "trainer.json").read_text())
        loaded = load_model(directory, device=str(self.device))
        self.model_config = loaded.config
        tensors = load_file(str(directory / "trainer.safetensors"))
        log.info("resuming %s phase at step %d from %s", state["phase"], state["step"], directory)
        return state, loaded.model, tensors

    @staticmethod
    def _restore_optimizer(optimizer, tensors: dict) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for i, param in enumerate(params):
            keys = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"optim.{i}.")}
            if keys:
                optimizer.state[param] = {k: v.to(param.device) if k != "step" else v for k, v in keys.items()}

    def _schedule(self, step: int, total: int, base: float) -> float:
        if step < self.config.warmup:
            return base * (step + 1) / self.config.warmup
        progress = (step - self.config.warmup) / max(1, total - self.config.warmup)
        return base * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    # -- phases ------------------------------------------------------------------------------

    def run(self) -> Path:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        episodes = self._load_episodes()
        resumed = self._resume()
        phase, start, model, tensors = "autoencoder", 0, None, None
        if resumed:
            state, model, tensors = resumed
            phase, start = state["phase"], state["step"]
            rng.bit_generator.state = state["numpy_rng"]
            torch.set_rng_state(tensors["torch_rng"])
        if model is None:
            model = build_model(self.model_config).to(self.device)
            if cfg.init_from or cfg.init_autoencoder:
                # Stage 2 starts from stage 1's weights; baselines share the main model's frozen
                # encoder (same latents, fair comparison).
                # stage 1 trains no value stream: value weights a stage-1 checkpoint lacks start fresh
                donor = load_model(cfg.init_from or cfg.init_autoencoder, device=str(self.device), fresh_prefix="value.")
                if cfg.init_from:
                    # the value stream's input and output layers start fresh: stage 1 never
                    # trained them, and stage 2 may read different inputs (value_reads_*)
                    load_weights(model, donor.model.state_dict(), cfg.init_from, ("value.", REFIT))
                else:
                    load_weights(model.autoencoder, donor.model.autoencoder.state_dict(), cfg.init_autoencoder, (REFIT.removeprefix("autoencoder."),))
                self.model_config.latent_mean, self.model_config.latent_std = donor.config.latent_mean, donor.config.latent_std
                if donor.config.ood_score == self.model_config.ood_score == "reconstruction":  # "latent" refits
                    self.model_config.ood_reference = donor.config.ood_reference
                phase = "value"
        views = self._views(episodes)
        if phase == "autoencoder":
            self._train_autoencoder(model, views, rng, start, tensors)
            phase, start, tensors = "value", 0, None
            self._save("latest", model, torch.optim.AdamW(model.parameters()), phase, 0, rng)
            save_model(self.out / "checkpoints" / "ae", model, self.model_config)
        self._train_value(model, episodes, views, rng, start, tensors)
        final = self.out / "final"
        checkpoint_hash = save_model(final, model, self.model_config)
        self._log({"phase": "done", "checkpoint": str(final), "hash": checkpoint_hash})
        return final

    def refit_ood(self, checkpoint: str | Path) -> Path:
        """A trained checkpoint with `ood_score` "latent" fit on this config's training data,
        as `wvm train` fits it when value training starts (same frames, seed and code), into
        OUT/final; the weights are unchanged. For checkpoints trained before the score existed."""
        checkpoint = Path(checkpoint)
        self.model_config = replace(read_config(checkpoint), ood_score="latent", ood_groups=0, ood_reference=0.0)
        model = build_model(self.model_config).to(self.device).eval()
        load_weights(model, load_file(str(checkpoint / MODEL_FILE)), str(checkpoint), (REFIT,))
        episodes = self._load_episodes()
        self._encode_views(model, self._views(episodes, variants=1), episodes)
        digest = save_model(self.out / "final", model, self.model_config)
        self._log({"phase": "refit_ood", "from": str(checkpoint), "ood_groups": self.model_config.ood_groups, "hash": digest})
        return self.out / "final"

    def _load_episodes(self) -> list[TrainingEpisode]:
        """The config's training episodes; `self.domains` their data source and camera each (the OOD score's groups)."""
        loaded = [(spec, e) for spec in self.config.data for e in load_episodes(spec.store, spec.labels, spec.camera)]
        if not loaded:
            raise CheckpointError("no training episodes")
        self.domains = [f"{spec.store} {e.camera}" for spec, e in loaded]
        return [e for _, e in loaded]

    @torch.no_grad()
    def _views(self, episodes: list[TrainingEpisode], variants: int | None = None) -> torch.Tensor:
        """Every frame under `aug_variants` views at the model's input size, uint8
        (views, frames, S, S, 3). View 0 is the inference preprocessing; the others are one
        random augmentation per episode. Made once, batched per episode (fast), and
        deterministic in the seed, so a resumed run sees the same data."""
        cfg, size = self.config, self.model_config.image_size
        views = []
        for view in tqdm(range(variants or cfg.aug_variants), desc="views", disable=not self.progress):
            chunks = []
            for e_index, episode in enumerate(episodes):
                frames = torch.from_numpy(episode.frames)
                rng = np.random.default_rng([cfg.seed, view, e_index])
                x = preprocess(frames, size) if view == 0 else augment(frames, size, rng)
                chunks.append(((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1))
            views.append(torch.cat(chunks))
        return torch.stack(views)

    def _train_autoencoder(self, model, views: torch.Tensor, rng, start: int, tensors) -> None:
        cfg = self.config
        ae = model.autoencoder
        ae.train()
        optimizer = torch.optim.AdamW(ae.parameters(), lr=cfg.ae_lr, weight_decay=0.0)
        if tensors:
            self._restore_optimizer(optimizer, tensors)
        started = time.monotonic()
        n_views, n_frames = views.shape[:2]
        for step in tqdm(range(start, cfg.ae_steps), desc="autoencoder", initial=start, total=cfg.ae_steps, disable=not self.progress):
            pick = views[rng.integers(0, n_views, cfg.ae_batch), rng.integers(0, n_frames, cfg.ae_batch)]
            x = (pick.permute(0, 3, 1, 2).float() / 127.5 - 1.0).to(self.device)
            for group in optimizer.param_groups:
                group["lr"] = self._schedule(step, cfg.ae_steps, cfg.ae_lr)
            with self._autocast():
                loss, info = ae.loss(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % cfg.log_every == 0 or step == cfg.ae_steps - 1:
                self._log({"phase": "autoencoder", "step": step, **info, "elapsed_s": round(time.monotonic() - started, 1)})
            if step and step % cfg.checkpoint_every == 0:
                self._save("latest", model, optimizer, "autoencoder", step + 1, rng)
        ae.eval()

    @torch.no_grad()
    def _encode_views(self, model, views: torch.Tensor, episodes: list[TrainingEpisode]) -> torch.Tensor:
        """Normalised latents of every view of every frame, float16 (views, frames, C, S, S)."""
        mc = self.model_config
        ae = model.autoencoder.eval()
        latents = torch.stack(
            [
                torch.cat([ae.encode((b.permute(0, 3, 1, 2).float() / 127.5 - 1.0).to(self.device)).cpu() for b in view.split(512)])
                for view in tqdm(views, desc="encode views", disable=not self.progress)
            ]
        )
        if mc.latent_std == 1.0 and mc.latent_mean == 0.0:  # first time: fix the normalisation
            mc.latent_mean = float(latents[0].mean())
            mc.latent_std = float(latents[0].std())
        normalised = ((latents - mc.latent_mean) / mc.latent_std).half()
        if mc.ood_score == "latent":  # every run fits it on its own frames: those its values were trained on
            lengths = [len(e.frames) for e in episodes]
            mc.ood_reference = fit_latent_density(model.autoencoder, normalised[0], lengths, self.domains, self.config.seed)
            mc.ood_groups = len(model.autoencoder.ood_center)
        elif not mc.ood_reference:
            mc.ood_reference = self._ood_reference(model, views[0])
        return normalised

    @torch.no_grad()
    def _ood_reference(self, model, frames: torch.Tensor, count: int = 4096) -> float:
        """The reconstruction error 99% of (a sample of) the training frames stay under."""
        pick = torch.from_numpy(np.random.default_rng(self.config.seed).choice(len(frames), min(count, len(frames)), replace=False))
        errors = torch.cat([model.encode_and_score(b[:, None].to(self.device))[1].cpu().reshape(-1) for b in frames[pick].split(512)])
        return float(torch.quantile(errors, 0.99))

    def _train_value(self, model, episodes: list[TrainingEpisode], views: torch.Tensor, rng, start: int, tensors) -> None:
        cfg, mc = self.config, self.model_config
        latents = self._encode_views(model, views, episodes)
        text_encoder = TextEncoder()
        task_embedding = text_encoder([e.task for e in episodes])
        sampler = EpisodeSampler(
            episodes,
            mc.samples_per_episode,
            cfg.edit_p,
            cfg.warp_p,
            cfg.edit_lag,
            cfg.edit_lag_kinds,
            cfg.reverse_p,
            cfg.failed_edit_p,
        )
        # halves of the tasks, alternating in name order (Batch.fold, wvm.model.FrameProgress)
        tasks = sorted({e.task for e in episodes})
        folds = torch.tensor([tasks.index(e.task) % 2 for e in episodes])
        states = episode_states(episodes) if mc.value_reads_state else None
        frozen = {id(p) for p in model.autoencoder.parameters()}
        if cfg.freeze_video:
            frozen |= {id(p) for p in model.video_parameters()}
        elif cfg.freeze_video_layers:
            frozen |= {id(p) for p in model.video_parameters(cfg.freeze_video_layers)}
        if mc.kind == "wvm" and mc.value_loss_weight == 0:  # stage 1: the value stream is idle
            frozen |= {id(p) for p in model.value.parameters()} | {id(p) for layer in model.layers for p in layer.value.parameters()}
        trainable = [p for p in model.parameters() if id(p) not in frozen]
        for p in model.parameters():
            p.requires_grad_(id(p) not in frozen)
        groups = [{"params": trainable, "lr_scale": 1.0}]
        if cfg.video_lr_scale != 1.0:
            video = {id(p) for p in model.video_parameters()}
            groups = [
                {"params": [p for p in trainable if id(p) in video], "lr_scale": cfg.video_lr_scale},
                {"params": [p for p in trainable if id(p) not in video], "lr_scale": 1.0},
            ]
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if tensors:
            self._restore_optimizer(optimizer, tensors)
        model.train()
        model.autoencoder.eval()
        started = time.monotonic()
        stage = "world model" if mc.kind == "wvm" and mc.value_loss_weight == 0 else mc.kind
        bar = tqdm(range(start, cfg.steps), desc=f"train {stage}", initial=start, total=cfg.steps, disable=not self.progress)
        for step in bar:
            ids, frame_idx, values, valid = sampler.sample(cfg.batch_size, rng)
            view = rng.integers(0, cfg.aug_variants, cfg.batch_size)
            text = task_embedding[ids].clone()
            text[rng.random(cfg.batch_size) < cfg.text_dropout] = 0.0
            batch = Batch(
                latents=latents[view[:, None], frame_idx].float().to(self.device),
                text=text.to(self.device),
                values=torch.from_numpy(values).to(self.device),
                valid=torch.from_numpy(valid).to(self.device),
                fold=folds[ids].to(self.device),
            )
            if states is not None:
                picked = states[frame_idx].clone()
                picked[torch.from_numpy(rng.random(cfg.batch_size) < cfg.state_dropout)] = float("nan")
                batch.states = picked.to(self.device)
            for group in optimizer.param_groups:
                group["lr"] = self._schedule(step, cfg.steps, cfg.lr) * group["lr_scale"]
            with self._autocast():
                loss, info = model.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                record = {"phase": stage, "step": step, **info, "lr": optimizer.param_groups[-1]["lr"]}
                self._log({**record, "elapsed_s": round(time.monotonic() - started, 1)})
                bar.set_postfix(loss=f"{info['loss']:.4f}", value=f"{info['value']:.4f}", video=f"{info['video']:.4f}")
            if step and step % cfg.checkpoint_every == 0:
                self._save("latest", model, optimizer, "value", step + 1, rng)
        model.eval()


def episode_states(episodes: list[TrainingEpisode]) -> torch.Tensor:
    """Every frame's robot state, float32 (frames, S) in the sampler's global frame order: zero
    padded to the widest state (wvm.model.state_features is unchanged by it), NaN for episodes
    recorded without one."""
    width = max((e.states.shape[1] for e in episodes if e.states is not None), default=1)
    return torch.from_numpy(np.concatenate([pad_state(e.states, len(e.values), width) for e in episodes]))


def load_weights(module: torch.nn.Module, state: dict, where: str, skip: tuple[str, ...]) -> None:
    """Load `state` into `module`, but for keys starting with `skip` (they stay as they are:
    fresh, or refit by this run); any other weight `state` lacks is an error naming `where`."""
    taken = {k: v for k, v in state.items() if not k.startswith(skip)}
    if missing := [k for k in module.load_state_dict(taken, strict=False).missing_keys if not k.startswith(skip)]:
        raise CheckpointError(f"{where}: lacks weights {missing[:5]}")


@torch.no_grad()
def fit_latent_density(
    autoencoder, latents: torch.Tensor, lengths: list[int], groups: list[str], seed: int,
    count: int = 20000, shrinkage: float = 1e-2, quantile: float = 0.99,
) -> float:
    """Fit the Gaussians behind `ood_score` "latent", one per training domain (`groups`: each
    episode's, e.g. its data source and camera), to (a sample of) the training frames'
    normalised latents (frames, C, S, S), in frame order of episodes of `lengths`: store their
    centres and whitening matrices in the autoencoder's ood_* buffers (one row per group), and
    return the reference, the episode-mean distance `quantile` of the training episodes stay
    under. `shrinkage` (times the mean variance, added to the diagonal) keeps directions a
    domain's frames never vary in from dominating the distance."""
    flat = latents.flatten(1)
    frame_group = np.repeat(np.asarray(groups), lengths)
    rng = np.random.default_rng(seed)
    centers, whitens = [], []
    for group in sorted(set(groups)):
        rows = np.flatnonzero(frame_group == group)
        sample = flat[torch.from_numpy(np.sort(rng.choice(rows, min(count, len(rows)), replace=False)))].double()
        covariance = torch.cov(sample.T)
        covariance += shrinkage * covariance.diagonal().mean() * torch.eye(len(covariance), dtype=covariance.dtype)
        centers.append(sample.mean(0))
        # P = L L^T, so |(z - c) L| is the Mahalanobis distance
        whitens.append(torch.linalg.cholesky(torch.linalg.inv(covariance)))
    device = autoencoder.encoder[0].weight.device
    autoencoder.register_buffer("ood_center", torch.stack(centers).float().to(device))
    autoencoder.register_buffer("ood_whiten", torch.stack(whitens).float().to(device))
    distance = torch.cat([autoencoder.latent_distance(chunk.to(device)).cpu() for chunk in latents.split(8192)])
    per_episode = torch.stack([d.mean() for d in distance.split(lengths)])
    return float(torch.quantile(per_episode, quantile))


def train(config: TrainConfig, out: str | Path, progress: bool = True) -> Path:
    return Trainer(config, out, progress).run()
