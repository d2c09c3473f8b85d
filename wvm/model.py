"""The World Value Model v2, small, in one file (REFERENCE §1, issue #10).

A clip is a whole episode read at N evenly spaced samples (offline relabelling sees the whole
episode; N is fixed per model, shorter episodes use every frame and pad). Frames pass through a
frozen `FrameAutoencoder` into latents. Two transformer streams share joint self-attention in
every layer (Mixture-of-Transformers: separate weights, one attention):

- the **video stream** (wide) is a world model: it reads the first frames of the episode as
  clean context and denoises the rest (flow matching: y_t = t*y + (1-t)*eps, target velocity
  y - eps). Stage 1 trains it alone, on every video we have (no labels needed); stage 2 adds
  the value stream and trains both;
- the **value stream** (narrow) holds one value token per sample; the values are flow-matched
  the same way. Each value token also reads its own frame, how it moved from the previous
  sample and how far it is from the first and last samples (`motion_distances`), and, where the
  episode records a robot state, the arm's own motion (`state_features`, v9), or since v12 only
  a small judge's reading of it as work, pause or undo (`StateRates`); a second judge reads the
  whole episode's state as succeeded or failed (`StateSuccess`), added to the success logit.

What the value stream predicts (`value_head`). v2 predicted each value directly and gave every
token its position in the episode: it learnt the time ramp and ignored the frames
(reports/experiments.md). v3 ("rates") predicts per sample the work done since the previous
sample (about 1 working, 0 paused, -1 undoing) and per episode whether it succeeds; values are
the running sum of the rates, scaled to end at 1 on success (`progress_from_rates`, which gives
exactly the ground-truth formulas). Even pace is the default the frames must argue against,
and the level of progress is never guessed from appearance, which does not carry over to
unseen tasks. No episode-time input reaches the value tokens.

The mask is asymmetric: value tokens attend to video and value tokens; video tokens never attend
to value tokens. We compute it as two attention calls, video->video and value->(video+value),
which is exactly one masked joint attention and lets a large video backbone keep its own kernel.

Why whole episodes (v1 read windows of 1 prefix + 4 current frames and chained them): on tasks
it never saw, a windowed model had to guess absolute progress from appearance, and guessed
badly. Over the whole episode the cues that carry across tasks are visible: a pause is frames
that stop changing, a retry is the arm revisiting states it already passed, a failure is an
episode that ends stalled or drifting, and the episode starts at 0. Rewinding (REFERENCE §1)
becomes an episode edit in training (wvm.data): frozen, reversed and truncated segments spliced
into expert episodes, labelled by the same ground-truth formulas.

Inference is one Euler step from pure noise (t = 0) with a fixed noise sample, every frame
clean, so an episode's values are a deterministic function of its frames, task text and
robot state, whatever batch it arrives in. Each sampled frame is encoded once.

An ensemble (`EnsembleValueModel`, `members` > 1) holds stage-2 runs of one config with
different seeds from one stage 1, sharing its frozen encoder: each labels the episode from the
same latents and their values are averaged. Seeds differ most on unseen tasks, where the mean
beats the typical seed (reports/experiments.md row 46).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

# -- configuration ----------------------------------------------------------------------------


@dataclass
class WVMConfig:
    # frames
    image_size: int = 64  # frames are resized to image_size x image_size before the encoder
    latent_channels: int = 8
    ae_widths: tuple[int, ...] = (32, 64, 128)  # one stride-2 stage each: 64 -> 8 px latents
    patch: int = 4  # latent patch per video token: 8x8 latents -> 2x2 = 4 tokens per frame
    # clip: the whole episode at this many evenly spaced samples (pipelines.windows.sample_positions)
    samples_per_episode: int = 24
    # transformer
    video_width: int = 128
    value_width: int = 64
    depth: int = 4
    heads: int = 4
    head_dim: int = 32
    mlp_ratio: int = 4
    # residual dropout in both streams' layers (training only): the model fits its training
    # episodes far better than new episodes of the same tasks (reports/experiments.md)
    dropout: float = 0.0
    text_dim: int = 384  # all-MiniLM-L6-v2 sentence embeddings
    # False: the task text is ignored (read as zeros, the text-dropout input) and values come from
    # the frames alone; a task name never trained on is itself an unfamiliar input
    reads_text: bool = True
    # training recipe
    video_loss_weight: float = 1.0  # lambda; 0 gives the "no video loss" ablation
    value_loss_weight: float = 1.0  # 0 in stage 1 (world-model pretraining)
    value_reads_time: bool = True  # value tokens get the episode-time embedding (v2.0: a ramp shortcut)
    value_reads_motion: bool = False  # value tokens also read their frame minus the previous and the first sample's
    value_reads_distances: bool = False  # ...and per-token distances to the previous, first and last samples (motion_distances)
    value_reads_goal: bool = False  # ...and the episode-normalised approach to the last frame (goal_progress)
    # ...and the robot's own motion where the episode has a state vector (state_features): a
    # still arm, an arm retracing its path, whatever the task or camera
    value_reads_state: bool = False
    # ...and, with the state, whether the arm comes back later to where it is now (hindsight:
    # offline relabelling sees the whole episode). An undo is the stretch the arm both retraced
    # onto and redoes afterwards, even where the objects do not move back. Measured level with
    # v9's recipe on unseen tasks, better pauses off the training viewpoint (experiments row 55)
    value_reads_state_ahead: bool = False
    # ...and, with the state, a judgement of each step as work, pause or undo from the state's
    # motion alone (StateRates, trained on the ground truth's steps; its probabilities are an
    # input the value tokens read, detached). The state's motion carries to unseen tasks where
    # the frames' appearance does not (reports/experiments.md row 66)
    value_reads_state_rates: bool = False
    # ...two of them, each trained on half the tasks (Batch.fold), the tokens reading in training
    # the one that never saw the episode's task (cross-fitting, as FrameProgress): so the tokens
    # learn how far to trust the state on a new task, and when the frames should overrule it
    value_state_rates_crossfit: bool = False
    # ...and, with the "rates" head, a judgement of the whole episode as succeeded or failed from
    # the state's motion alone (StateSuccess, trained on whether the ground truth reaches 1; its
    # logit, detached, is added to the success head's through a learnt weight). Alone it told
    # unseen tasks' failures from successes at AUROC 0.94-0.95 where v12's success probability
    # got 0.91, and drifts after a pause or undo at 0.79 where v12 was at chance (experiment log,
    # the probe before row 74; row 74 for the model with it)
    value_state_success: bool = False
    # False (with value_reads_state_rates): the tokens read the state only through StateRates'
    # judgement, not state_features themselves. Row 66's tokens, reading both, turned a lift that
    # re-climbs the heights of its descent (basketball) into an undo where StateRates said work
    value_reads_state_features: bool = True
    # ...and a per-frame progress estimate (FrameProgress: two regressors on one frame's latents,
    # cross-fitted over halves of the tasks): "level" its value, change since the previous sample
    # and level above the first sample's; "change" the change alone; "" not at all
    value_reads_progress: str = ""
    value_delta_weight: float = 0.0  # loss on consecutive value differences: the curve's shape, not only its level
    # "rates" head only: cross-entropy of its success probability against whether the episode's
    # ground truth ends at 1; otherwise success is learnt only through the values it scales
    value_success_weight: float = 0.0
    # "rates" head only: success is judged by one extra value token that attends to every frame
    # and value token, instead of the mean of the value tokens that also judge the rates
    value_success_token: bool = False
    # "direct": each value token's head is the value's flow velocity. "rates": each token judges
    # the work done since the previous sample (+ progressing, 0 paused, - undoing) and the
    # episode whether it succeeds; values are the running sum of the rates (see progress_from_rates)
    value_head: str = "direct"
    clean_p: float = 0.5  # episodes seen with every frame clean (the inference condition)
    context_min: float = 0.25  # otherwise at least this fraction of the samples is clean context
    noise_seed: int = 0
    # filled in after the autoencoder is trained: latents are normalised with these
    latent_mean: float = 0.0
    latent_std: float = 1.0
    # How unlike the training frames a frame is (the out-of-distribution score's raw material):
    # "reconstruction": the autoencoder's error (MSE on [-1, 1] pixels), with `ood_reference`
    # the error 99% of the training frames stay under; "latent": the Mahalanobis distance of the
    # frame's latent from the nearest of `ood_groups` Gaussians, one fit to the training latents
    # of each camera of each data source (FrameAutoencoder's ood_* buffers), with `ood_reference`
    # the episode-mean distance 99% of the training episodes stay under. An autoencoder trained
    # on several cameras reconstructs a new robot nearly as well as its worst training camera, so
    # its error alone stops flagging it; one Gaussian over every camera is too broad (row 82).
    ood_score: str = "reconstruction"
    ood_reference: float = 0.0
    ood_groups: int = 0  # set when the Gaussians are fit
    # provenance
    # "small" (SmallVideoBackbone), or "package.module:factory" for another video backbone:
    # factory(config) -> nn.Module with patchify / embed / head and the per-layer stream
    # weights, e.g. a pretrained video DiT loaded from backbone_path on a GPU node.
    backbone: str = "small"
    backbone_path: str = ""
    kind: str = "wvm"  # wvm | static (the per-frame baseline)
    # > 1: an ensemble of this many models of this config, trained with different seeds from
    # one stage 1 (so one frozen encoder), values averaged (EnsembleValueModel, `wvm ensemble`)
    members: int = 1
    version: str = "dev"

    def __post_init__(self):
        if self.value_head not in ("direct", "rates"):
            raise ValueError(f"value_head must be 'direct' or 'rates', got {self.value_head!r}")
        if self.value_reads_progress not in PROGRESS_FEATURES:
            raise ValueError(f"value_reads_progress must be one of {sorted(PROGRESS_FEATURES)}, got {self.value_reads_progress!r}")
        if (self.value_success_weight > 0 or self.value_success_token) and self.value_head != "rates":
            raise ValueError("value_success_weight and value_success_token need value_head 'rates' (the direct head has no success probability)")
        if (self.value_reads_state_ahead or self.value_reads_state_rates) and not self.value_reads_state:
            raise ValueError("value_reads_state_ahead and value_reads_state_rates need value_reads_state")
        if self.value_state_rates_crossfit and not self.value_reads_state_rates:
            raise ValueError("value_state_rates_crossfit needs value_reads_state_rates")
        if self.value_state_success and not (self.value_reads_state and self.value_head == "rates"):
            raise ValueError("value_state_success needs value_reads_state and value_head 'rates' (it adds to the success probability)")
        if not self.value_reads_state_features and not self.value_reads_state_rates:
            raise ValueError("value_reads_state_features false needs value_reads_state_rates (the state's only way in)")
        if self.members < 1:
            raise ValueError(f"members must be at least 1, got {self.members}")
        if self.ood_score not in ("reconstruction", "latent"):
            raise ValueError(f"ood_score must be 'reconstruction' or 'latent', got {self.ood_score!r}")

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** len(self.ae_widths)

    @property
    def tokens_per_frame(self) -> int:
        return (self.latent_size // self.patch) ** 2

    @property
    def patch_dim(self) -> int:
        return self.latent_channels * self.patch**2

    @property
    def window_frames(self) -> int:
        """Frames a caller sends per episode (padded when the episode has fewer)."""
        return self.samples_per_episode

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WVMConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)} (a v1 windowed checkpoint? v2 reads whole episodes)")
        data = dict(data)
        if "ae_widths" in data:
            data["ae_widths"] = tuple(data["ae_widths"])
        return cls(**data)


# -- frames -> latents ------------------------------------------------------------------------


def preprocess(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (..., H, W, 3) frames of any size -> float (N, 3, size, size) in [-1, 1]."""
    lead = frames.shape[:-3]
    x = frames.reshape(-1, *frames.shape[-3:]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.reshape(*lead, 3, size, size) if lead else x


class FrameAutoencoder(nn.Module):
    """A small KL-regularised conv autoencoder; trained first, then frozen."""

    def __init__(self, config: WVMConfig):
        super().__init__()
        c = config.latent_channels
        enc, dec = [], []
        in_ch = 3
        for width in config.ae_widths:
            enc += [nn.Conv2d(in_ch, width, 4, stride=2, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
                    nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU()]  # fmt: skip
            in_ch = width
        self.encoder = nn.Sequential(*enc, nn.Conv2d(in_ch, 2 * c, 1))
        dec = [nn.Conv2d(c, in_ch, 3, padding=1)]
        for width in reversed(config.ae_widths):
            out_ch = max(width // 2, 16)
            dec += [nn.GroupNorm(8, in_ch), nn.SiLU(), nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1),
                    nn.GroupNorm(8, out_ch), nn.SiLU(), nn.Conv2d(out_ch, out_ch, 3, padding=1)]  # fmt: skip
            in_ch = out_ch
        self.decoder = nn.Sequential(*dec, nn.SiLU(), nn.Conv2d(in_ch, 3, 3, padding=1))
        if config.ood_score == "latent":  # filled in by wvm.train.fit_latent_density
            dim = c * config.latent_size**2
            self.register_buffer("ood_center", torch.zeros(config.ood_groups, dim))
            self.register_buffer("ood_whiten", torch.zeros(config.ood_groups, dim, dim))

    def latent_distance(self, latents: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance of normalised latents (..., C, S, S) from the nearest of the
        training frames' Gaussians: (...)."""
        z = latents.flatten(-3).float()
        shape, z = z.shape[:-1], z.reshape(-1, z.shape[-1])
        if not len(self.ood_center):  # not fit yet (an autoencoder-only checkpoint): no score
            return torch.zeros(shape, device=z.device)
        # (frames, groups): |(z - c_g) W_g| for each group g
        distance = torch.stack([((z - c) @ w).norm(dim=-1) for c, w in zip(self.ood_center.float(), self.ood_whiten.float())], dim=-1)
        return distance.min(dim=-1).values.reshape(shape)

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-20, 10)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.moments(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def loss(self, x: torch.Tensor, kl_weight: float = 1e-4) -> tuple[torch.Tensor, dict]:
        mean, logvar = self.moments(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        recon = F.mse_loss(self.decode(z), x)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        return recon + kl_weight * kl, {"recon": recon.item(), "kl": kl.item()}


# -- transformer parts ------------------------------------------------------------------------


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
    angles = 1000 * t.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class Mlp(nn.Sequential):
    def __init__(self, width: int, ratio: int):
        super().__init__(nn.Linear(width, ratio * width), nn.GELU(), nn.Linear(ratio * width, width))


class StreamLayer(nn.Module):
    """One stream's weights for one layer: norms, q/k/v and output projections, MLP."""

    def __init__(self, width: int, heads: int, head_dim: int, mlp_ratio: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.drop = nn.Dropout(dropout)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * heads * head_dim)
        self.out = nn.Linear(heads * head_dim, width)
        self.mlp = Mlp(width, mlp_ratio)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return q, k, v  # each (B, heads, N, head_dim)

    def finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        b, _, n, _ = attended.shape
        x = x + self.drop(self.out(attended.transpose(1, 2).reshape(b, n, -1)))
        return x + self.drop(self.mlp(self.norm2(x)))


class JointLayer(nn.Module):
    """Mixture-of-Transformers layer: separate weights per stream, one joint attention with
    the asymmetric mask (value -> video + value; video -> video only). `video_keys` and
    `value_keys` (B, 1, 1, N) say which keys are real (padding samples are not)."""

    def __init__(self, config: WVMConfig):
        super().__init__()
        args = (config.heads, config.head_dim, config.mlp_ratio, config.dropout)
        self.video = StreamLayer(config.video_width, *args)
        self.value = StreamLayer(config.value_width, *args)

    def forward(self, x: torch.Tensor, y: torch.Tensor, video_keys: torch.Tensor, value_keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        qx, kx, vx = self.video.project(x)
        qy, ky, vy = self.value.project(y)
        video_out = F.scaled_dot_product_attention(qx, kx, vx, attn_mask=video_keys)
        joint_keys = torch.cat([video_keys, value_keys], dim=-1)
        value_out = F.scaled_dot_product_attention(qy, torch.cat([kx, ky], 2), torch.cat([vx, vy], 2), attn_mask=joint_keys)
        return self.video.finish(x, video_out), self.value.finish(y, value_out)


class SmallVideoBackbone(nn.Module):
    """Video stream: latents of the episode (+ task text, + per-frame flow time) -> video
    tokens, and the per-layer weights the joint layers use. A large pretrained video DiT would
    implement the same parts (patchify / embed / head) around its own blocks."""

    def __init__(self, config: WVMConfig):
        super().__init__()
        w = config.video_width
        self.config = config
        self.patch_in = nn.Linear(config.patch_dim, w)
        self.frame_time = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.patch_pos = nn.Parameter(torch.zeros(1, config.tokens_per_frame, w))
        self.text_in = nn.Linear(config.text_dim, w)
        self.time_in = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.head = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, config.patch_dim))
        nn.init.normal_(self.patch_pos, std=0.02)

    def patchify(self, z: torch.Tensor) -> torch.Tensor:
        """(B, F, C, S, S) latents -> (B, F, tokens_per_frame, patch_dim)."""
        b, f, c, s, _ = z.shape
        p, g = self.config.patch, s // self.config.patch
        z = z.view(b, f, c, g, p, g, p).permute(0, 1, 3, 5, 2, 4, 6)
        return z.reshape(b, f, g * g, c * p * p)

    def embed(self, patches: torch.Tensor, text: torch.Tensor, frame_t: torch.Tensor, episode_t: torch.Tensor) -> torch.Tensor:
        """patches (B, F, n, patch_dim), text (B, text_dim), frame_t (B, F) flow time per frame
        (1 = clean), episode_t (B, F) where in the episode each frame is (0 = first, 1 = last)
        -> tokens (B, 1 + F * n, width); token 0 is the task text."""
        b, f, n, _ = patches.shape
        w = self.config.video_width
        time = self.time_in(timestep_embedding(frame_t.reshape(-1), w)).view(b, f, 1, w)
        where = self.frame_time(timestep_embedding(episode_t.reshape(-1), w)).view(b, f, 1, w)
        x = self.patch_in(patches) + self.patch_pos + time + where
        return torch.cat([self.text_in(text)[:, None], x.reshape(b, f * n, w)], dim=1)


class ValueStream(nn.Module):
    def __init__(self, config: WVMConfig):
        super().__init__()
        w = config.value_width
        self.width = w
        self.value_in = nn.Linear(1, w)
        # each value token also reads its own frame directly (its latent patches and whether the
        # frame is clean): per-frame evidence is one step away, temporal context comes through the
        # joint attention. Without it the value tokens learnt the episode-time ramp and ignored the
        # frames (reports/experiments.md).
        # Motion (this frame minus the previous sample's, and minus the first's) makes a pause or
        # a return towards the start a local cue; the episode time, one linear step from the
        # expert answer, can be left out so that values must come from the frames.
        self.reads_time, self.reads_motion = config.value_reads_time, config.value_reads_motion
        self.reads_distances = config.value_reads_distances
        frame_dim = config.tokens_per_frame * config.patch_dim * (3 if self.reads_motion else 1)
        frame_dim += config.tokens_per_frame * DISTANCE_FEATURES if self.reads_distances else 0
        self.reads_goal = config.value_reads_goal
        frame_dim += GOAL_FEATURES if self.reads_goal else 0
        self.reads_progress = config.value_reads_progress
        self.progress = FrameProgress(config) if self.reads_progress else None
        frame_dim += PROGRESS_FEATURES[self.reads_progress]
        self.reads_state = config.value_reads_state and config.value_reads_state_features
        self.reads_state_ahead = config.value_reads_state_ahead
        frame_dim += (STATE_FEATURES + STATE_AHEAD_FEATURES * self.reads_state_ahead) if self.reads_state else 0
        self.state_rates = StateRates(config.value_state_rates_crossfit) if config.value_reads_state_rates else None
        frame_dim += len(STEP_CLASSES) if self.state_rates is not None else 0
        self.frame_in = nn.Linear(frame_dim + 1, w)
        self.frame_time = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w)) if self.reads_time else None
        self.time_in = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.head = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, 1))
        self.success = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, 1)) if config.value_head == "rates" else None
        self.state_success = StateSuccess() if config.value_state_success else None
        if self.state_success is not None:
            # how much the success logit trusts the state's verdict (its logit, and whether there
            # is one): starts at face value, and the value loss learns how far to trust it
            self.success_from_state = nn.Linear(2, 1)
            with torch.no_grad():
                self.success_from_state.weight.copy_(torch.tensor([[1.0, 0.0]]))
                self.success_from_state.bias.zero_()
        self.success_query = nn.Parameter(torch.randn(1, 1, w) * 0.02) if config.value_success_token else None

    def embed(
        self,
        values: torch.Tensor,
        t: torch.Tensor,
        episode_t: torch.Tensor,
        patches: torch.Tensor,
        frame_t: torch.Tensor,
        valid: torch.Tensor,
        progress: torch.Tensor | None = None,
        states: torch.Tensor | None = None,
        state_steps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`progress` (B, N): the per-frame progress estimate the tokens read (value_reads_progress);
        `states` (B, N, S) the samples' robot states, NaN for an episode without (state_features);
        `state_steps` (B, N, 3) StateRates' probabilities (StateRates.read)."""
        b, n = values.shape
        own = patches.reshape(b, n, -1)
        parts = [own, own - torch.cat([own[:, :1], own[:, :-1]], dim=1), own - own[:, :1]] if self.reads_motion else [own]
        if self.reads_distances:
            parts.append(motion_distances(patches, valid).reshape(b, n, -1))
        if self.reads_goal:
            parts.append(goal_progress(patches, valid))
        if self.progress is not None:
            parts.append(progress_features(progress, valid, self.reads_progress))
        if self.reads_state:
            parts.append(state_features(states, valid, self.reads_state_ahead))
        if state_steps is not None:
            parts.append(state_steps * StateRates.known(states, valid)[..., None])
        y = self.value_in(values[..., None]) + self.frame_in(torch.cat([*parts, frame_t[..., None]], dim=-1))
        if self.reads_time:
            y = y + self.frame_time(timestep_embedding(episode_t.reshape(-1), self.width)).view(b, n, self.width)
        return y + self.time_in(timestep_embedding(t, self.width))[:, None]


# -- the model --------------------------------------------------------------------------------


@dataclass
class Batch:
    """A training batch of episodes at N samples. Latents are normalised; values are progress
    in [0, 1]; `valid` marks real samples (the rest is padding of shorter episodes)."""

    latents: torch.Tensor  # (B, N, C, S, S)
    text: torch.Tensor  # (B, text_dim)
    values: torch.Tensor  # (B, N) ground truth
    valid: torch.Tensor  # (B, N) bool
    # (B,) 0 or 1: which FrameProgress regressor trains on this episode's task (half the tasks
    # each); None outside training
    fold: torch.Tensor | None = None
    states: torch.Tensor | None = None  # (B, N, S) robot state per sample, NaN rows: none known
    extras: dict = field(default_factory=dict)


def valid_mask(lengths: torch.Tensor, n: int) -> torch.Tensor:
    """(B,) numbers of real samples -> (B, n) bool."""
    return torch.arange(n, device=lengths.device)[None] < lengths.reshape(-1, 1)


def episode_time(valid: torch.Tensor) -> torch.Tensor:
    """(B, N) real-sample mask -> where each sample lies in its episode, 0 (first frame) to 1
    (last), as the evenly spaced samples of pipelines.windows.sample_positions lie; padding gets 1.
    Samples carry this instead of their index, so a short episode read at every frame still
    ends at 1."""
    lengths = valid.sum(1, keepdim=True).float()
    index = torch.arange(valid.shape[1], device=valid.device, dtype=torch.float32)[None]
    return (index / (lengths - 1).clamp(min=1.0)).clamp(max=1.0)


DISTANCE_FEATURES = 4


def motion_distances(patches: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per sample and spatial token (B, N, tokens, 4): the RMS latent distance to the previous
    sample (is anything moving here), to the first and to the last sample, and how much closer
    to the last sample this one is than the previous (approaching the end state, or moving away
    from it as in a retry). A linear layer cannot take a norm, and these are the cues that hold
    on any task: still frames are a pause, a return towards earlier states is a regression."""
    lengths = valid.sum(1).clamp(min=1)
    last = patches.gather(1, (lengths - 1).view(-1, 1, 1, 1).expand(-1, 1, *patches.shape[2:]))
    previous = torch.cat([patches[:, :1], patches[:, :-1]], dim=1)

    def rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).pow(2).mean(-1).add(1e-8).sqrt()

    to_last = rms(patches, last)
    approach = rms(previous, last) - to_last
    return torch.stack([rms(patches, previous), rms(patches, patches[:, :1]), to_last, approach], dim=-1)


GOAL_FEATURES = 2


STATE_FEATURES = 7
STATE_AHEAD_FEATURES = 2


def state_features(states: torch.Tensor | None, valid: torch.Tensor, ahead: bool = False) -> torch.Tensor:
    """The robot's own motion at each sample (B, N, 7, or 9 with `ahead`), from its state vector
    of any width S (B, N, S; an episode without a state is all NaN, or `states` None for the
    whole batch).

    Each state dimension is standardised over the episode (floored at a tenth of the widest
    one, so a still joint's noise is not magnified), then per sample: speed (distance to the
    previous sample over the episode's mean step), the fraction of the episode's path length
    covered so far (a clock that stops while the arm is still), distances to the first and last
    states over the path length, how close the arm comes to a state it held two or more samples
    before (over the mean step; near 0 while retracing or redoing its path) and how far back that
    state is (growing while undoing, steady while redoing), and 1 when the episode has a state.
    With `ahead`, the same two looking forward: how close the arm comes two or more samples
    later to its state now, and how far ahead (near 0 while undoing, which the redo revisits,
    large while redoing; a forward pass followed by its retrace reads near 0 both ways).
    Zero padding of S changes none of these, so robots of any width share one batch. A still arm
    is unambiguous here, unlike in pixels (reports/experiments.md, probe before row 46)."""
    b, n = valid.shape
    width = STATE_FEATURES + STATE_AHEAD_FEATURES * ahead
    if states is None:
        return valid.new_zeros(b, n, width, dtype=torch.float32)
    known = ~torch.isnan(states).any(-1).any(-1)  # (B,)
    mask = (valid & known[:, None]).float()
    x = torch.nan_to_num(states.float())
    count = mask.sum(1, keepdim=True).clamp(min=1.0)  # (B, 1)
    mean = (x * mask[..., None]).sum(1) / count
    std = (((x - mean[:, None]) ** 2 * mask[..., None]).sum(1) / count).sqrt()
    scale = torch.maximum(std, 0.1 * std.amax(-1, keepdim=True)).clamp(min=1e-6)
    z = (x - mean[:, None]) / scale[:, None]
    step = (z - torch.cat([z[:, :1], z[:, :-1]], dim=1)).norm(dim=-1) * mask  # 0 at the first sample
    path = step.sum(1, keepdim=True)
    steps = (mask.sum(1, keepdim=True) - 1).clamp(min=1.0)
    mean_step = (path / steps).clamp(min=1e-3)
    lengths = valid.sum(1).clamp(min=1)
    last = z.gather(1, (lengths - 1).view(-1, 1, 1).expand(-1, 1, z.shape[-1]))
    distance = torch.cdist(z, z)  # (B, N, N)
    index = torch.arange(n, device=valid.device)

    def revisit(others: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distance to the nearest state among `others` (B, N, N) over the mean step, and how many
        samples away it is over the episode's steps; 5 and 0 where there are none."""
        nearest, where = distance.masked_fill(~others, float("inf")).min(-1)
        found = others.any(-1)
        closeness = torch.where(found, (nearest / mean_step).clamp(max=5.0), torch.full_like(nearest, 5.0))
        return closeness, torch.where(found, (where - index[None]).abs().float() / steps, torch.zeros_like(nearest))

    retrace, lag = revisit((index[None, :] <= index[:, None] - 2)[None] & valid[:, None, :])
    columns = [
        (step / mean_step).clamp(max=5.0),
        step.cumsum(1) / path.clamp(min=1e-6),
        (z - z[:, :1]).norm(dim=-1) / path.clamp(min=1e-6),
        (z - last).norm(dim=-1) / path.clamp(min=1e-6),
        retrace,
        lag,
        torch.ones_like(step),
    ]
    if ahead:
        columns += list(revisit((index[None, :] >= index[:, None] + 2)[None] & valid[:, None, :]))
    return torch.stack(columns, dim=-1) * mask[..., None]


def goal_progress(patches: torch.Tensor, valid: torch.Tensor, bound: float = 3.0) -> torch.Tensor:
    """Per sample (B, N, 2): how far the whole frame has come from the first sample towards the
    last, 1 - d(i, last) / d(first, last), and that quantity's change since the previous sample
    times the episode's steps (about 1 while closing in at even pace, 0 still, -1 moving back
    as fast). Normalised by the episode's own first-to-last distance, so its scale does not
    depend on the task or the camera, unlike motion_distances' raw latent distances."""
    b, n = valid.shape
    flat = patches.reshape(b, n, -1)
    lengths = valid.sum(1).clamp(min=1)
    last = flat.gather(1, (lengths - 1).view(-1, 1, 1).expand(-1, 1, flat.shape[-1]))
    to_last = (flat - last).pow(2).mean(-1).add(1e-8).sqrt()
    closed = 1 - to_last / to_last[:, :1].clamp(min=1e-3)
    step = (closed - torch.cat([closed[:, :1], closed[:, :-1]], dim=1)) * (lengths - 1).clamp(min=1)[:, None]
    features = torch.stack([closed, step], dim=-1).clamp(-bound, bound)
    return features * valid[..., None]


STEP_CLASSES = ("work", "pause", "undo")


def step_classes(values: torch.Tensor, valid: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """Each sample's step from the previous one, as STEP_CLASSES indices (B, N): the ground
    truth's change times the episode's steps (about 1 for work at even pace, 0 paused or holding
    after a failure, about -1 undoing) against +-`threshold`; -1 at the first sample and padding."""
    steps = (valid.sum(1) - 1).clamp(min=1)[:, None].float()
    change = torch.cat([torch.zeros_like(values[:, :1]), values.diff(dim=1)], dim=1) * steps
    classes = torch.where(change > threshold, 0, torch.where(change < -threshold, 2, 1))
    first = torch.zeros_like(valid)
    first[:, 0] = True
    return classes.masked_fill(~valid | first, -1)


class StateRates(nn.Module):
    """Work, pause or undo at each sample from the robot state's motion alone (state_features,
    looking ahead too, of the sample and its two neighbours): no frames, no task, so what it
    learns on the training tasks is the same motion on any other (a small MLP fit on the seen
    bench's states told undo from the rest at AUROC 0.93 on unseen tasks, where the full model
    reads undoing as pausing; reports/experiments.md row 66)."""

    def __init__(self, crossfit: bool = False, hidden: int = 64):
        super().__init__()
        def judge() -> nn.Module:
            return nn.Sequential(nn.Linear(3 * (STATE_FEATURES + STATE_AHEAD_FEATURES), hidden), nn.SiLU(), nn.Linear(hidden, len(STEP_CLASSES)))

        self.net = judge()
        # the second fold's judge (value_state_rates_crossfit); `net` judges the first fold, or all
        self.other = judge() if crossfit else None

    @staticmethod
    def known(states: torch.Tensor | None, valid: torch.Tensor) -> torch.Tensor:
        """(B, N) float: 1 at the real samples of episodes with a state."""
        if states is None:
            return torch.zeros_like(valid, dtype=torch.float32)
        return (valid & ~torch.isnan(states).any(-1).any(-1)[:, None]).float()

    def forward(self, states: torch.Tensor | None, valid: torch.Tensor) -> torch.Tensor:
        """(B, N, S) states -> (B, N, judges, 3) logits over STEP_CLASSES (one judge, or one per fold)."""
        f = state_features(states, valid, ahead=True)
        previous = torch.cat([f[:, :1], f[:, :-1]], dim=1)
        following = torch.cat([f[:, 1:], f[:, -1:]], dim=1)
        x = torch.cat([previous, f, following], dim=-1)
        return torch.stack([net(x) for net in (self.net, self.other) if net is not None], dim=2)

    @staticmethod
    def read(logits: torch.Tensor, fold: torch.Tensor | None) -> torch.Tensor:
        """The probabilities (B, N, 3) the value tokens read: with two judges, in training the
        one that never saw the episode's task (fold (B,)), otherwise the mean of both. Detached,
        so the value loss cannot make them something other than the state's judgement."""
        p = logits.detach().softmax(-1)
        if p.shape[2] == 1 or fold is None:
            return p.mean(2)
        other = (1 - fold).view(-1, 1, 1, 1).expand(-1, p.shape[1], 1, p.shape[3])
        return p.gather(2, other).squeeze(2)

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor, fold: torch.Tensor | None) -> torch.Tensor:
        """Cross-entropy of each judge on its own episodes (targets (B, N), -1: none): every
        episode for a single judge, its fold's for two."""
        judges = logits.shape[2]
        if judges > 1 and fold is None:
            raise ValueError("value_state_rates_crossfit needs Batch.fold in training (which half of the tasks each episode is in)")
        own = [targets if judges == 1 else targets.masked_fill((fold != j)[:, None], -1) for j in range(judges)]
        losses = [F.cross_entropy(logits[:, :, j].reshape(-1, logits.shape[-1]), t.reshape(-1), ignore_index=-1) for j, t in enumerate(own) if (t >= 0).any()]
        return torch.stack(losses).mean() if losses else logits.sum() * 0


class StateSuccess(nn.Module):
    """Whether the whole episode succeeded, from the robot state's motion alone (state_features,
    looking ahead too, at every sample): two convolutions over the samples, pooled over the
    episode, plus the features of its last samples, where a failure shows (the arm stalls,
    drifts off or lets go and lifts away). Offline relabelling sees the whole episode, so the
    judgement may use hindsight; like StateRates it reads no frames and no task, so what it
    learns on the training tasks is the same motion on any other. Returns a logit per episode."""

    LAST = 4  # samples at the episode's end read on their own

    def __init__(self, hidden: int = 32):
        super().__init__()
        width = STATE_FEATURES + STATE_AHEAD_FEATURES
        self.conv = nn.Sequential(nn.Conv1d(width, hidden, 3, padding=1), nn.SiLU(), nn.Conv1d(hidden, hidden, 3, padding=1), nn.SiLU())
        self.out = nn.Linear(2 * hidden + self.LAST * width, 1)

    def forward(self, states: torch.Tensor | None, valid: torch.Tensor) -> torch.Tensor:
        """(B, N, S) states -> (B,) logits of success (meaningless where StateRates.known is 0)."""
        f = state_features(states, valid, ahead=True)  # zero at padding and without a state
        known = StateRates.known(states, valid)[..., None]
        h = self.conv(f.transpose(1, 2)).transpose(1, 2) * known
        mean = h.sum(1) / known.sum(1).clamp(min=1.0)
        peak = h.masked_fill(known == 0, float("-inf")).amax(1).nan_to_num(0.0, neginf=0.0)
        ends = valid.sum(1).clamp(min=1)[:, None] - torch.arange(self.LAST, 0, -1, device=valid.device)[None]
        last = f.gather(1, ends.clamp(min=0)[..., None].expand(-1, -1, f.shape[-1]))
        return self.out(torch.cat([mean, peak, last.flatten(1)], dim=-1)).squeeze(-1)

    @staticmethod
    def loss(logits: torch.Tensor, succeeded: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against `succeeded` (B,) over the episodes with a state (`known` (B,) bool)."""
        if not known.any():
            return logits.sum() * 0
        return F.binary_cross_entropy_with_logits(logits[known], succeeded[known].to(logits.dtype))


class FrameProgress(nn.Module):
    """Per-frame progress estimates: two small regressors on one frame's latents, no temporal
    context (the static baseline's cue, row 42d: on tasks never trained on a retrace looks like
    an earlier frame, but single estimates are noisy). Each is trained on the episodes of half
    the training tasks (`Batch.fold`), and in training the value stream reads the estimate of
    the regressor that never saw the episode's task: estimates as unreliable as they will be on
    an unseen task, so the value stream learns how far to trust them (cross-fitting, as in
    stacking). At inference it reads the mean of both."""

    def __init__(self, config: WVMConfig):
        super().__init__()
        d, w = config.tokens_per_frame * config.patch_dim, config.video_width
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Dropout(0.1), nn.Linear(d, 2 * w), nn.GELU(), nn.Linear(2 * w, w), nn.GELU(), nn.Linear(w, 1)) for _ in range(2)
        )

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """patches (B, N, tokens, patch_dim) -> both regressors' estimates (B, N, 2)."""
        flat = patches.reshape(*patches.shape[:2], -1)
        return torch.cat([head(flat) for head in self.heads], dim=-1)

    @staticmethod
    def read(estimates: torch.Tensor, fold: torch.Tensor | None) -> torch.Tensor:
        """The estimate (B, N) the value stream reads: the other fold's regressor for an
        episode of fold `fold` (B,) in training, the mean of both otherwise. Detached, so the
        regressors stay progress estimates and the value loss cannot reshape them."""
        if fold is None:
            return estimates.mean(-1).detach()
        other = (1 - fold).view(-1, 1, 1).expand(-1, estimates.shape[1], 1)
        return estimates.gather(-1, other).squeeze(-1).detach()


PROGRESS_FEATURES = {"": 0, "level": 3, "change": 1}  # value_reads_progress -> features per sample


def progress_features(progress: torch.Tensor, valid: torch.Tensor, mode: str = "level", bound: float = 3.0) -> torch.Tensor:
    """Per sample (B, N, PROGRESS_FEATURES[mode]): the estimate's change since the previous
    sample times the episode's steps (about 1 at even pace, negative when it falls), clamped;
    with "level" also the estimate and its level above the first sample's. "change" leaves
    the level out: on a new task the estimate's level is the less reliable part (row 43)."""
    steps = (valid.sum(1) - 1).clamp(min=1)[:, None]
    change = ((progress - torch.cat([progress[:, :1], progress[:, :-1]], dim=1)) * steps).clamp(-bound, bound)
    parts = [change] if mode == "change" else [progress, change, progress - progress[:, :1]]
    return torch.stack(parts, dim=-1) * valid[..., None]


def progress_from_rates(rates: torch.Tensor, success: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Values from per-sample work rates (B, N) and the probability of success (B,).

    The running sum c_i of the rates after the first sample, over the steps an expert at even
    pace would need: the episode's total c_end if it succeeds (a successful episode ends at 1),
    its number of steps K if it fails (it followed the expert pace while working, then stopped).
    With rates 1 (working), 0 (paused) and -1 (undoing) this reproduces every ground-truth
    formula of wvm.metrics.ground_truth: expert, hesitation, retry and failed. Rates are a
    local judgement of the motion, which is what carries over to unseen tasks; the level of
    progress is never read from appearance."""
    steps_taken = (rates[:, 1:] * (valid[:, 1:] & valid[:, :-1])).cumsum(1)
    running = torch.cat([torch.zeros_like(rates[:, :1]), steps_taken], dim=1)
    lengths = valid.sum(1)
    steps = (lengths - 1).clamp(min=1).float()
    total = running.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)
    # a success whose rates sum to (near) nothing has no defined pace: floor it
    scale = success * total.clamp(min=0.1 * steps) + (1 - success) * steps
    return running / scale[:, None]


def _masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the entries where mask (broadcast to pred) is true."""
    mask = mask.to(pred.dtype).expand_as(pred)
    return ((pred - target) ** 2 * mask).sum() / mask.sum().clamp(min=1.0)


class WorldValueModel(nn.Module):
    def __init__(self, config: WVMConfig):
        super().__init__()
        self.config = config
        self.autoencoder = FrameAutoencoder(config)
        self.video = make_video_backbone(config)
        self.value = ValueStream(config)
        self.layers = nn.ModuleList(JointLayer(config) for _ in range(config.depth))
        generator = torch.Generator().manual_seed(config.noise_seed)
        # One fixed noise sample for inference: deterministic, batch-independent outputs.
        self.register_buffer("inference_value_noise", torch.randn(1, config.samples_per_episode, generator=generator), persistent=False)

    def video_parameters(self, layers: int | None = None):
        """The video stream's weights: backbone + its half of every joint layer, or of the
        lowest `layers` only."""
        yield from self.video.parameters()
        for layer in self.layers[:layers]:
            yield from layer.video.parameters()

    # latents

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, F, H, W, 3) -> normalised latents (B, F, C, S, S) with the frozen encoder."""
        return self.encode_and_score(frames, score=False)[0]

    @torch.no_grad()
    def encode_and_score(self, frames: torch.Tensor, score: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 (B, F, H, W, 3) -> (normalised latents (B, F, C, S, S), per-frame distance
        from the training frames (B, F) or None: the autoencoder's error or the latent's
        Mahalanobis distance, by `ood_score`). One encoder pass serves both."""
        b, f = frames.shape[:2]
        size = self.config.image_size
        x = preprocess(frames, size).reshape(b * f, 3, size, size)
        mean = self.autoencoder.encode(x)
        latents = ((mean - self.config.latent_mean) / self.config.latent_std).reshape(b, f, *mean.shape[1:])
        if not score:
            return latents, None
        if self.config.ood_score == "latent":
            return latents, self.autoencoder.latent_distance(latents)
        return latents, ((self.autoencoder.decode(mean) - x) ** 2).mean(dim=(1, 2, 3)).reshape(b, f)

    # the joint network

    def forward(
        self, latents: torch.Tensor, frame_t: torch.Tensor, text: torch.Tensor, values: torch.Tensor, value_t: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocities for every latent patch (B, N, tokens, patch_dim) and every value (B, N).
        `latents` holds clean (frame_t = 1) and noised frames; `values` the noised values."""
        video_velocity, value_velocity, *_ = self.joint(latents, frame_t, text, values, value_t, valid)
        return video_velocity, value_velocity

    def joint(
        self,
        latents: torch.Tensor,
        frame_t: torch.Tensor,
        text: torch.Tensor,
        values: torch.Tensor,
        value_t: torch.Tensor,
        valid: torch.Tensor,
        fold: torch.Tensor | None = None,
        states: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """`forward` plus the rates head's success probability (B,) (None for the direct head),
        both FrameProgress estimates (B, N, 2) (None unless value_reads_progress), StateRates'
        logits (B, N, judges, 3) (None unless value_reads_state_rates) and StateSuccess' logits
        (B,) (None unless value_state_success); `fold` as Batch.fold, `states` as Batch.states."""
        b, n = valid.shape
        tpf = self.config.tokens_per_frame
        if not self.config.reads_text:
            text = torch.zeros_like(text)
        where = episode_time(valid)
        patches = self.video.patchify(latents)
        x = self.video.embed(patches, text, frame_t, where)
        estimates = self.value.progress(patches) if self.value.progress is not None else None
        progress = FrameProgress.read(estimates, fold) if estimates is not None else None
        state_steps = self.value.state_rates(states, valid) if self.value.state_rates is not None else None
        state_judgement = StateRates.read(state_steps, fold) if state_steps is not None else None
        y = self.value.embed(values, value_t, where, patches, frame_t, valid, progress, states, state_judgement)
        frame_keys = valid[:, :, None].expand(b, n, tpf).reshape(b, n * tpf)
        video_keys = torch.cat([valid.new_ones(b, 1), frame_keys], dim=1)[:, None, None]
        value_keys = valid
        if self.value.success_query is not None:  # one more value token, after the samples
            y = torch.cat([y, self.value.success_query.expand(b, 1, -1)], dim=1)
            value_keys = torch.cat([valid, valid.new_ones(b, 1)], dim=1)
        for layer in self.layers:
            x, y = layer(x, y, video_keys, value_keys[:, None, None])
        video_velocity = self.video.head(x[:, 1:]).view(b, n, tpf, -1)
        head = self.value.head(y[:, :n]).squeeze(-1)
        if self.config.value_head == "direct":
            return video_velocity, head, None, estimates, state_steps, None
        if self.value.success_query is not None:
            judged = y[:, n]
        else:
            judged = (y * valid[..., None]).sum(1) / valid.sum(1, keepdim=True).clamp(min=1)
        logit = self.value.success(judged).squeeze(-1)
        verdict = self.value.state_success(states, valid) if self.value.state_success is not None else None
        if verdict is not None:
            known = StateRates.known(states, valid)[:, 0]
            logit = logit + self.value.success_from_state(torch.stack([verdict.detach() * known, known], dim=-1)).squeeze(-1)
        success = torch.sigmoid(logit)
        # the clean values are predicted outright; as a velocity from the noised input that is
        # what one Euler step from t = 0 (inference) lands on
        return video_velocity, progress_from_rates(head, success, valid) - values, success, estimates, state_steps, verdict

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        b, n = batch.values.shape
        device = batch.latents.device
        lengths = batch.valid.sum(1)
        # World model: frames after a split point are the future, noised at a shared flow time;
        # some episodes stay fully clean, the condition the value stream sees at inference.
        first_future = torch.ceil(cfg.context_min * lengths) + torch.rand(b, device=device) * (lengths - torch.ceil(cfg.context_min * lengths))
        first_future = torch.where(torch.rand(b, device=device) < cfg.clean_p, lengths.float(), first_future.floor())
        future = (torch.arange(n, device=device)[None] >= first_future[:, None]) & batch.valid
        t_video = torch.rand(b, device=device)
        frame_t = torch.where(future, t_video[:, None], torch.ones_like(batch.values))
        video_eps = torch.randn_like(batch.latents)
        ft = frame_t.view(b, n, 1, 1, 1)
        noised = ft * batch.latents + (1 - ft) * video_eps
        # Values: flow matched too; half the episodes at t = 0, the inference condition.
        value_t = torch.rand(b, device=device) * (torch.rand(b, device=device) > 0.5)
        value_eps = torch.randn_like(batch.values)
        noised_values = value_t[:, None] * batch.values + (1 - value_t[:, None]) * value_eps
        video_velocity, value_velocity, success, estimates, state_steps, verdict = self.joint(noised, frame_t, batch.text, noised_values, value_t, batch.valid, batch.fold, batch.states)
        target = self.video.patchify(batch.latents) - self.video.patchify(video_eps)
        video_loss = _masked_mse(video_velocity, target, future[:, :, None, None])
        if cfg.value_head == "direct":
            estimate = noised_values + (1 - value_t[:, None]) * value_velocity  # the clean values it implies
            value_loss = _masked_mse(value_velocity, batch.values - value_eps, batch.valid)
        else:
            estimate = noised_values + value_velocity
            value_loss = _masked_mse(estimate, batch.values, batch.valid)
        total = cfg.value_loss_weight * value_loss + cfg.video_loss_weight * video_loss
        logs = {"value": value_loss.item(), "video": video_loss.item()}
        if cfg.value_delta_weight > 0:
            # differenced along the episode; scaled by the episode's number of steps so a ramp's
            # step is about 1 whatever N is
            steps = (lengths - 1).clamp(min=1).float()[:, None]
            pairs = batch.valid[:, 1:] & batch.valid[:, :-1]
            delta_loss = _masked_mse(estimate.diff(dim=1) * steps, batch.values.diff(dim=1) * steps, pairs)
            total = total + cfg.value_loss_weight * cfg.value_delta_weight * delta_loss
            logs["delta"] = delta_loss.item()
        if estimates is not None:
            # each regressor learns from the clean frames of its own fold's episodes only
            if batch.fold is None:
                raise ValueError("value_reads_progress needs Batch.fold in training (which half of the tasks each episode is in)")
            own = F.one_hot(batch.fold, 2).bool()[:, None, :] & (batch.valid & (frame_t == 1))[..., None]
            progress_loss = _masked_mse(estimates, batch.values[..., None].expand_as(estimates), own)
            total = total + cfg.value_loss_weight * progress_loss
            logs["progress"] = progress_loss.item()
        if state_steps is not None:
            # the state's judgement learns from the ground truth's steps, of episodes with a state only
            targets = step_classes(batch.values, batch.valid).masked_fill(StateRates.known(batch.states, batch.valid) == 0, -1)
            step_loss = StateRates.loss(state_steps, targets, batch.fold)
            total = total + cfg.value_loss_weight * step_loss
            logs["state_steps"] = step_loss.item()
        # success = the ground truth reaches 1 (wvm.metrics.ground_truth: only a failed episode does not)
        succeeded = batch.values.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1) > 0.99
        if verdict is not None:
            verdict_loss = StateSuccess.loss(verdict, succeeded, StateRates.known(batch.states, batch.valid)[:, 0] > 0)
            total = total + cfg.value_loss_weight * verdict_loss
            logs["state_success"] = verdict_loss.item()
        if cfg.value_success_weight > 0:
            success_loss = F.binary_cross_entropy(success.clamp(1e-6, 1 - 1e-6), succeeded.to(success.dtype))
            total = total + cfg.value_loss_weight * cfg.value_success_weight * success_loss
            logs["success"] = success_loss.item()
        return total, {"loss": total.item(), **logs}

    @torch.no_grad()
    def predict(self, frames: torch.Tensor, text: torch.Tensor, lengths: torch.Tensor, states: torch.Tensor | None = None) -> torch.Tensor:
        """One-step inference. frames: uint8 (B, N, H, W, 3), the episode's samples (padded
        after `lengths` (B,) real ones); text: (B, text_dim); states: (B, N, S) robot state at
        the samples, NaN for an episode without, or None. Returns (B, N) values in [0, 1]
        (padding positions are 0)."""
        return self.predict_latents(self.encode_frames(frames), text, lengths, states)

    @torch.no_grad()
    def predict_latents(self, latents: torch.Tensor, text: torch.Tensor, lengths: torch.Tensor, states: torch.Tensor | None = None) -> torch.Tensor:
        """`predict` from normalised latents (B, N, C, S, S)."""
        return self.judge_latents(latents, text, lengths, states)[0]

    @torch.no_grad()
    def judge_latents(
        self, latents: torch.Tensor, text: torch.Tensor, lengths: torch.Tensor, states: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`predict_latents` plus each episode's probability of success (B,): the rates head's,
        which scales the values (NaN for the direct head, which has none)."""
        b, n = latents.shape[:2]
        valid = valid_mask(lengths, n)
        noise = self.inference_value_noise[:, :n].expand(b, -1)
        zero = torch.zeros(b, device=latents.device)
        _, velocity, success, *_ = self.joint(latents, torch.ones(b, n, device=latents.device), text, noise, zero, valid, states=states)
        values = ((noise + velocity).clamp(0.0, 1.0) * valid).float()
        return values, (success.float() if success is not None else torch.full((b,), float("nan"), device=latents.device))


class StaticValueModel(nn.Module):
    """The per-frame baseline the method argues against: the same frozen encoder and text,
    one frame at a time, no temporal context, a regression head."""

    def __init__(self, config: WVMConfig):
        super().__init__()
        self.config = config
        w = config.video_width
        self.autoencoder = FrameAutoencoder(config)
        self.video = make_video_backbone(config)  # reused for patchify/embed (one frame)
        layer = nn.TransformerEncoderLayer(w, config.heads, config.mlp_ratio * w, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, 1))

    encode_frames = WorldValueModel.encode_frames
    encode_and_score = WorldValueModel.encode_and_score

    def video_parameters(self, layers: int | None = None):
        return iter(())

    def forward(self, latents: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """latents (B, 1, C, S, S) -> value (B,)."""
        b = latents.shape[0]
        x = self.video.embed(self.video.patchify(latents), text, torch.ones(b, 1, device=latents.device), torch.zeros(b, 1, device=latents.device))
        return self.head(self.encoder(x)[:, 0]).squeeze(-1)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict]:
        # every real sample of the episode is one independent training example
        keep = batch.valid.reshape(-1)
        latents = batch.latents.reshape(-1, 1, *batch.latents.shape[2:])[keep]
        text = batch.text.repeat_interleave(batch.valid.shape[1], dim=0)[keep]
        loss = F.mse_loss(self(latents, text), batch.values.reshape(-1)[keep])
        return loss, {"loss": loss.item(), "value": loss.item(), "video": 0.0}

    predict = WorldValueModel.predict

    @torch.no_grad()
    def predict_latents(self, latents: torch.Tensor, text: torch.Tensor, lengths: torch.Tensor, states: torch.Tensor | None = None) -> torch.Tensor:
        b, n = latents.shape[:2]  # one frame at a time: no motion, so no use for states
        values = self(latents.reshape(b * n, 1, *latents.shape[2:]), text.repeat_interleave(n, dim=0)).reshape(b, n)
        return (values.clamp(0.0, 1.0) * valid_mask(lengths, n)).float()

    @torch.no_grad()
    def judge_latents(self, latents, text, lengths, states=None) -> tuple[torch.Tensor, torch.Tensor]:
        values = self.predict_latents(latents, text, lengths)
        return values, torch.full(values.shape[:1], float("nan"), device=values.device)  # no success judgement


@torch.no_grad()
def answer_episodes(
    model: nn.Module, frames: torch.Tensor, text: torch.Tensor, lengths: torch.Tensor, states: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a request is answered with (schemas/inference.py): values (B, N); each episode's
    out-of-distribution score (B,), the mean distance of its real frames from the training frames
    (`ood_score`) over `ood_reference` (about 1 or less for episodes like the training data; 0
    when the checkpoint has no reference); and its probability of success (B,) (NaN for a model without one)."""
    latents, frame_error = model.encode_and_score(frames)
    values, success = model.judge_latents(latents, text, lengths, states)
    valid = valid_mask(lengths, frames.shape[1]).float()
    error = (frame_error * valid).sum(1) / valid.sum(1).clamp(min=1.0)
    reference = model.config.ood_reference
    return values, (error / reference if reference > 0 else torch.zeros_like(error)).float(), success


def make_video_backbone(config: WVMConfig) -> nn.Module:
    if config.backbone == "small":
        return SmallVideoBackbone(config)
    import importlib

    module, _, factory = config.backbone.partition(":")
    if not factory:
        raise ValueError(f"backbone {config.backbone!r}: expected 'small' or 'package.module:factory'")
    return getattr(importlib.import_module(module), factory)(config)


class EnsembleValueModel(nn.Module):
    """Seeds of one recipe sharing stage 1's frozen encoder, values averaged (see the module
    docstring); built from trained members by `wvm.checkpoint.save_ensemble` (`wvm ensemble`)."""

    def __init__(self, config: WVMConfig):
        super().__init__()
        self.config = config
        self.autoencoder = FrameAutoencoder(config)
        self.members = nn.ModuleList(build_model(replace(config, members=1)) for _ in range(config.members))
        for member in self.members:
            del member.autoencoder  # the shared one above encodes for all

    encode_frames = WorldValueModel.encode_frames
    encode_and_score = WorldValueModel.encode_and_score
    predict = WorldValueModel.predict

    @torch.no_grad()
    def predict_latents(self, latents: torch.Tensor, text: torch.Tensor, lengths: torch.Tensor, states: torch.Tensor | None = None) -> torch.Tensor:
        return self.judge_latents(latents, text, lengths, states)[0]

    def judge_latents(self, latents, text, lengths, states=None) -> tuple[torch.Tensor, torch.Tensor]:
        values, success = zip(*(member.judge_latents(latents, text, lengths, states) for member in self.members))
        return torch.stack(values).mean(0), torch.stack(success).mean(0)


def build_model(config: WVMConfig) -> nn.Module:
    if config.members > 1:
        return EnsembleValueModel(config)
    return {"wvm": WorldValueModel, "static": StaticValueModel}[config.kind](config)
