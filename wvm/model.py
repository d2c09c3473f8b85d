"""The World Value Model, small, in one file (REFERENCE §1).

A clip is 1 prefix frame + h current frames + h future frames, sampled along the episode,
plus (in the shipped model) an anchor: the episode's first frame, clean context that grounds the present
in the past. Without it a small model cannot tell, on a task it has never seen, whether the
arm is moving on or moving back; with it, "further from where we started" generalises.
Frames pass through a frozen `FrameAutoencoder` into latents. Two transformer streams share
joint self-attention in every layer (Mixture-of-Transformers: separate weights, one attention):

- the **video stream** (wide) reads prefix and current latents as clean context and denoises
  the future latents (flow matching: y_t = t*y + (1-t)*eps, target velocity y - eps);
- the **value stream** (narrow) holds a prefix value token and h chunk value tokens; the chunk
  values are flow-matched the same way.

The mask is asymmetric: value tokens attend to video and value tokens; video tokens never
attend to value tokens. We compute it as two attention calls, video->video and
value->(video+value), which is exactly one masked joint attention and lets a large video
backbone keep its own attention kernel.

Inference is one Euler step from pure noise (t = 0) with a fixed noise sample, so a window's
values are a deterministic function of its inputs, whatever the batch it arrives in.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

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
    # clip
    horizon: int = 4  # h: current frames = future frames = value chunk
    anchor_frame: bool = False  # the episode's first frame as extra context (the shipped model uses it)
    samples_per_episode: int = 20  # an episode is sampled evenly at this many frames (wvm.data)
    max_sample_interval_s: float = 1.0  # ...but never sample sparser than this
    # transformer
    video_width: int = 128
    value_width: int = 64
    depth: int = 4
    heads: int = 4
    head_dim: int = 32
    mlp_ratio: int = 4
    text_dim: int = 384  # all-MiniLM-L6-v2 sentence embeddings
    # training recipe
    video_loss_weight: float = 1.0  # lambda; 0 gives the "no video loss" ablation
    prefix_random_p: float = 0.5
    noise_seed: int = 0
    # filled in after the autoencoder is trained: latents are normalised with these
    latent_mean: float = 0.0
    latent_std: float = 1.0
    # provenance
    # "small" (SmallVideoBackbone), or "package.module:factory" for another video backbone:
    # factory(config) -> nn.Module with patchify / embed / head and the per-layer stream
    # weights, e.g. a pretrained video DiT loaded from backbone_path on a GPU node.
    backbone: str = "small"
    backbone_path: str = ""
    kind: str = "wvm"  # wvm | static (the per-frame baseline)
    version: str = "dev"

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
    def context_frames(self) -> int:
        """Clean context before the current frames: [anchor,] prefix."""
        return 2 if self.anchor_frame else 1

    @property
    def clip_frames(self) -> int:
        return self.context_frames + 2 * self.horizon

    @property
    def window_frames(self) -> int:
        """Frames a caller sends per window: context + current (the future is imagined)."""
        return self.context_frames + self.horizon

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WVMConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
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

    def __init__(self, width: int, heads: int, head_dim: int, mlp_ratio: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
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
        x = x + self.out(attended.transpose(1, 2).reshape(b, n, -1))
        return x + self.mlp(self.norm2(x))


class JointLayer(nn.Module):
    """Mixture-of-Transformers layer: separate weights per stream, one joint attention with
    the asymmetric mask (value -> video + value; video -> video only)."""

    def __init__(self, config: WVMConfig):
        super().__init__()
        args = (config.heads, config.head_dim, config.mlp_ratio)
        self.video = StreamLayer(config.video_width, *args)
        self.value = StreamLayer(config.value_width, *args)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        qx, kx, vx = self.video.project(x)
        qy, ky, vy = self.value.project(y)
        video_out = F.scaled_dot_product_attention(qx, kx, vx)
        value_out = F.scaled_dot_product_attention(qy, torch.cat([kx, ky], 2), torch.cat([vx, vy], 2))
        return self.video.finish(x, video_out), self.value.finish(y, value_out)


class SmallVideoBackbone(nn.Module):
    """Video stream: latents of the clip (+ task text, + flow time) -> video tokens, and the
    per-layer weights the joint layers use. A large pretrained video DiT would implement the
    same three parts (embed / layers / head) around its own blocks."""

    def __init__(self, config: WVMConfig):
        super().__init__()
        w = config.video_width
        self.config = config
        self.patch_in = nn.Linear(config.patch_dim, w)
        self.frame_pos = nn.Parameter(torch.zeros(config.clip_frames, 1, w))
        self.patch_pos = nn.Parameter(torch.zeros(1, config.tokens_per_frame, w))
        self.text_in = nn.Linear(config.text_dim, w)
        self.time_in = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.head = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, config.patch_dim))
        nn.init.normal_(self.frame_pos, std=0.02)
        nn.init.normal_(self.patch_pos, std=0.02)

    def patchify(self, z: torch.Tensor) -> torch.Tensor:
        """(B, F, C, S, S) latents -> (B, F, tokens_per_frame, patch_dim)."""
        b, f, c, s, _ = z.shape
        p, g = self.config.patch, s // self.config.patch
        z = z.view(b, f, c, g, p, g, p).permute(0, 1, 3, 5, 2, 4, 6)
        return z.reshape(b, f, g * g, c * p * p)

    def embed(self, patches: torch.Tensor, text: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b, f, n, _ = patches.shape
        w = self.config.video_width
        x = self.patch_in(patches) + self.frame_pos[:f] + self.patch_pos
        x = x.reshape(b, f * n, w)
        time = self.time_in(timestep_embedding(t, w))[:, None]
        text_token = self.text_in(text)[:, None]
        return torch.cat([text_token, x], dim=1) + time  # token 0 is the task text


class ValueStream(nn.Module):
    def __init__(self, config: WVMConfig):
        super().__init__()
        w = config.value_width
        self.value_in = nn.Linear(1, w)
        self.pos = nn.Parameter(torch.zeros(1, 1 + config.horizon, w))
        self.time_in = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.head = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, 1))
        nn.init.normal_(self.pos, std=0.02)

    def embed(self, prefix: torch.Tensor, chunk: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        values = torch.cat([prefix[:, None], chunk], dim=1)[..., None]  # (B, 1 + h, 1)
        return self.value_in(values) + self.pos + self.time_in(timestep_embedding(t, self.pos.shape[-1]))[:, None]


# -- the model --------------------------------------------------------------------------------


@dataclass
class Batch:
    """A training batch of clips. Latents are normalised; values are progress in [0, 1]."""

    latents: torch.Tensor  # (B, 1 + 2h, C, S, S)
    text: torch.Tensor  # (B, text_dim)
    prefix_value: torch.Tensor  # (B,)
    values: torch.Tensor  # (B, h) ground truth of the current frames
    extras: dict = field(default_factory=dict)


class WorldValueModel(nn.Module):
    def __init__(self, config: WVMConfig):
        super().__init__()
        self.config = config
        self.autoencoder = FrameAutoencoder(config)
        self.video = make_video_backbone(config)
        self.value = ValueStream(config)
        self.layers = nn.ModuleList(JointLayer(config) for _ in range(config.depth))
        generator = torch.Generator().manual_seed(config.noise_seed)
        h, s = config.horizon, config.latent_size
        # One fixed noise sample for inference: deterministic, batch-independent outputs.
        self.register_buffer(
            "inference_video_noise", torch.randn(1, h, config.latent_channels, s, s, generator=generator), persistent=False
        )
        self.register_buffer("inference_value_noise", torch.randn(1, h, generator=generator), persistent=False)

    # latents

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, F, H, W, 3) -> normalised latents (B, F, C, S, S) with the frozen encoder."""
        b, f = frames.shape[:2]
        z = self.autoencoder.encode(preprocess(frames, self.config.image_size).reshape(b * f, 3, *([self.config.image_size] * 2)))
        z = (z - self.config.latent_mean) / self.config.latent_std
        return z.reshape(b, f, *z.shape[1:])

    # the joint network

    def forward(
        self, latents: torch.Tensor, text: torch.Tensor, prefix: torch.Tensor, chunk: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocities for the future latent patches (B, h * tokens, patch_dim) and the chunk
        values (B, h). `latents` holds clean prefix/current and noised future latents."""
        patches = self.video.patchify(latents)
        x = self.video.embed(patches, text, t)
        y = self.value.embed(prefix, chunk, t)
        for layer in self.layers:
            x, y = layer(x, y)
        n = self.config.tokens_per_frame
        future = x[:, 1 + self.config.window_frames * n :]  # skip the text token, context and current frames
        return self.video.head(future), self.value.head(y[:, 1:]).squeeze(-1)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        b, h = batch.values.shape
        device = batch.latents.device
        # Shared flow time; half the clips at t = 0, the inference condition.
        t = torch.rand(b, device=device) * (torch.rand(b, device=device) > 0.5)
        k = cfg.window_frames
        context, future = batch.latents[:, :k], batch.latents[:, k:]
        video_eps = torch.randn_like(future)
        tb = t.view(b, 1, 1, 1, 1)
        noised = torch.cat([context, tb * future + (1 - tb) * video_eps], dim=1)
        value_eps = torch.randn_like(batch.values)
        noised_values = t[:, None] * batch.values + (1 - t[:, None]) * value_eps
        # Prefix randomisation: the prefix value is sometimes a lie, so the model must also read
        # progress from the frames. No loss sits on the prefix token.
        lie = torch.rand(b, device=device) < cfg.prefix_random_p
        prefix = torch.where(lie, torch.rand(b, device=device), batch.prefix_value)
        video_velocity, value_velocity = self(noised, batch.text, prefix, noised_values, t)
        target = self.video.patchify(future) - self.video.patchify(video_eps)
        video_loss = F.mse_loss(video_velocity, target.reshape(b, -1, cfg.patch_dim))
        value_loss = F.mse_loss(value_velocity, batch.values - value_eps)
        total = value_loss + cfg.video_loss_weight * video_loss
        return total, {"loss": total.item(), "value": value_loss.item(), "video": video_loss.item()}

    @torch.no_grad()
    def predict(self, frames: torch.Tensor, text: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """One-step inference. frames: uint8 (B, window_frames, H, W, 3): [anchor,] prefix and current frames;
        text: (B, text_dim); prefix: (B,) prefix values. Returns (B, h) values in [0, 1]."""
        b = frames.shape[0]
        context = self.encode_frames(frames)
        noise = self.inference_video_noise.expand(b, -1, -1, -1, -1)
        t = torch.zeros(b, device=frames.device)
        value_noise = self.inference_value_noise.expand(b, -1)
        _, velocity = self(torch.cat([context, noise], dim=1), text, prefix, value_noise, t)
        return (value_noise + velocity).clamp(0.0, 1.0)


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

    def forward(self, latents: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """latents (B, 1, C, S, S) -> value (B,)."""
        x = self.video.embed(self.video.patchify(latents), text, torch.zeros(latents.shape[0], device=latents.device))
        return self.head(self.encoder(x)[:, 0]).squeeze(-1)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict]:
        # every current frame of the clip is one independent training example
        b, h = batch.values.shape
        c = self.config.context_frames
        latents = batch.latents[:, c : c + h].reshape(b * h, 1, *batch.latents.shape[2:])
        text = batch.text.repeat_interleave(h, dim=0)
        loss = F.mse_loss(self(latents, text), batch.values.reshape(-1))
        return loss, {"loss": loss.item(), "value": loss.item(), "video": 0.0}

    @torch.no_grad()
    def predict(self, frames: torch.Tensor, text: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        h = self.config.horizon
        b = frames.shape[0]
        latents = self.encode_frames(frames[:, -h:]).reshape(b * h, 1, -1, *([self.config.latent_size] * 2))
        values = self(latents, text.repeat_interleave(h, dim=0)).reshape(b, h)
        return values.clamp(0.0, 1.0)


def make_video_backbone(config: WVMConfig) -> nn.Module:
    if config.backbone == "small":
        return SmallVideoBackbone(config)
    import importlib

    module, _, factory = config.backbone.partition(":")
    if not factory:
        raise ValueError(f"backbone {config.backbone!r}: expected 'small' or 'package.module:factory'")
    return getattr(importlib.import_module(module), factory)(config)


def build_model(config: WVMConfig) -> nn.Module:
    return {"wvm": WorldValueModel, "static": StaticValueModel}[config.kind](config)
