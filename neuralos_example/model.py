"""The next-frame model: a diffusers ``UNet2DModel`` that draws the screen after an action.

Inputs, stacked as channels: the noisy next frame (3), the previous frame (3) and a map of the
cursor position (1). The event (move, left, right, enter, or one class per key) is a class
embedding added to the timestep embedding. As in NeuralOS the network predicts the clean frame
(x0), and sampling is a few-step DDIM (``steps`` 1-16; with x0 prediction one step is the model's
guess from pure noise).

Why the output is ``previous frame + network output``: most pixels do not change from one frame
to the next, so the network spends its capacity on what does (the cursor, a menu, a window), and
an untrained network already copies the screen. Why the previous frame is noised during training
(``context_noise``): at deployment the previous frame is the model's own slightly-off output, and
training on perturbed context keeps closed-loop rollouts from drifting (a cheap stand-in for
scheduled sampling).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DModel
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn

from neuralos_example.simulator import BASE, KEYS, N_EVENTS, Action, Event, palette

N_CLASSES = N_EVENTS - 1 + len(KEYS)  # KEY is replaced by one class per key
SAMPLER_STEPS = (1, 2, 4, 8, 16)  # the settings the demo offers and the benchmark measures
DEFAULT_STEPS = 2  # the demo's: as good as 4 in closed loop for this base (benchmarks/RESULTS.md), at half the time


def action_class(event: int, key_index: int = 0) -> int:
    """The class id of an action: its event, with KEY split into one class per key (after the others)."""
    if event == Event.KEY:
        if not 1 <= key_index <= len(KEYS):
            raise ValueError(f"a KEY action needs key_index 1..{len(KEYS)}, got {key_index}")
        return N_EVENTS - 1 + key_index - 1
    return int(event) if event < Event.KEY else int(event) - 1


def action_classes(events: np.ndarray, key_index: np.ndarray) -> np.ndarray:
    """Vectorised :func:`action_class` for columns of events and key indices."""
    ev = events.astype(np.int64)
    out = np.where(ev < Event.KEY, ev, ev - 1)
    return np.where(ev == Event.KEY, N_EVENTS - 2 + key_index.astype(np.int64), out)


class ModelConfig(BaseModel):
    """The architecture and diffusion settings; saved next to the weights."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(BASE, ge=16, le=256, description="screen size in pixels (square)")
    patch: int = Field(2, ge=1, le=4, description="space-to-depth factor: the UNet runs at size / patch")
    channels: tuple[int, ...] = Field((32, 64, 128, 128), min_length=2, max_length=5)
    layers_per_block: int = Field(1, ge=1, le=3)
    train_timesteps: int = Field(1000, ge=10, le=4000)
    context_noise: float = Field(0.1, ge=0.0, le=1.0, description="max std of the noise on the previous frame in training")
    cursor_sigma: float = Field(1.0, gt=0.0, le=8.0, description="cursor map blob width, in 64-grid pixels")
    changed_weight: float = Field(10.0, ge=0.0, le=1000.0, description="extra loss weight of pixels that change")


class NextFrameModel(nn.Module):
    """``forward(noisy, t, prev, cursor, cls) -> x0`` on frames in [-1, 1], shape (B, 3, S, S)."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        c = self.config
        n = len(c.channels)
        if c.size % (c.patch * 2 ** (n - 1)):
            raise ValueError(f"size {c.size} must be divisible by patch * 2**(levels-1) = {c.patch * 2 ** (n - 1)}")
        p2 = c.patch * c.patch
        self.unet = UNet2DModel(
            sample_size=c.size // c.patch,
            in_channels=7 * p2,
            out_channels=3 * p2,
            block_out_channels=tuple(c.channels),
            layers_per_block=c.layers_per_block,
            down_block_types=("DownBlock2D",) * n,
            up_block_types=("UpBlock2D",) * n,
            norm_num_groups=8,
            num_class_embeds=N_CLASSES,
            attention_head_dim=8,
            add_attention=True,  # one attention layer in the middle block: global context at 1/8 size
        )
        self.scheduler = make_scheduler(c.train_timesteps)

    def forward(self, noisy: torch.Tensor, t: torch.Tensor, prev: torch.Tensor, cursor: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        # Space-to-depth first: the UNet's full-resolution layers are most of a step's cost,
        # and at patch 2 every output pixel still has its own channel.
        p = self.config.patch
        h = F.pixel_unshuffle(torch.cat([noisy, prev, cursor], dim=1), p)
        return prev + F.pixel_shuffle(self.unet(h, t, class_labels=cls).sample, p)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def make_scheduler(train_timesteps: int = 1000) -> DDIMScheduler:
    # "trailing" spacing starts sampling at the last timestep (pure noise) whatever the step count.
    return DDIMScheduler(
        num_train_timesteps=train_timesteps,
        prediction_type="sample",
        clip_sample=True,
        timestep_spacing="trailing",
        set_alpha_to_one=True,
    )


# --------------------------------------------------------------------------- tensors


def frames_to_tensor(frames: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (B, S, S, 3) -> float (B, 3, S, S) in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    return t.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def tensor_to_frames(x: torch.Tensor) -> np.ndarray:
    """float (B, 3, S, S) in [-1, 1] -> uint8 (B, S, S, 3)."""
    x = ((x.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def cursor_maps(xs: np.ndarray, ys: np.ndarray, size: int, sigma: float = 1.0, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, 1, S, S) Gaussian blobs at the cursor positions (sigma in 64-grid pixels)."""
    sig = sigma * size / BASE
    r = torch.arange(size, dtype=torch.float32, device=device)
    x = torch.as_tensor(np.asarray(xs), dtype=torch.float32, device=device)[:, None]
    y = torch.as_tensor(np.asarray(ys), dtype=torch.float32, device=device)[:, None]
    gx = torch.exp(-0.5 * ((r[None] - x) / sig) ** 2)
    gy = torch.exp(-0.5 * ((r[None] - y) / sig) ** 2)
    return (gy[:, :, None] * gx[:, None, :])[:, None]


class FrameBatch:
    """The tensors of a batch of transitions (on one device)."""

    def __init__(self, prev: torch.Tensor, nxt: torch.Tensor, cursor: torch.Tensor, cls: torch.Tensor) -> None:
        self.prev, self.next, self.cursor, self.cls = prev, nxt, cursor, cls

    def __len__(self) -> int:
        return self.prev.shape[0]

    @classmethod
    def from_arrays(
        cls,
        prev: np.ndarray,
        nxt: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        event: np.ndarray,
        key_index: np.ndarray,
        config: ModelConfig,
        device: torch.device | str = "cpu",
    ) -> FrameBatch:
        return cls(
            frames_to_tensor(prev, device),
            frames_to_tensor(nxt, device),
            cursor_maps(x, y, config.size, config.cursor_sigma, device),
            torch.from_numpy(action_classes(event, key_index)).to(device),
        )


def diffusion_loss(model: NextFrameModel, batch: FrameBatch, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """x0-prediction loss at a uniformly drawn timestep, with noise on the context frame."""
    c = model.config
    b = len(batch)
    dev = batch.prev.device
    t = torch.randint(0, c.train_timesteps, (b,), device=dev, generator=generator)
    noise = torch.randn(batch.next.shape, device=dev, generator=generator)
    noisy = model.scheduler.add_noise(batch.next, noise, t)
    prev = batch.prev
    if c.context_noise > 0:
        level = torch.rand((b, 1, 1, 1), device=dev, generator=generator) * c.context_noise
        prev = prev + level * torch.randn(prev.shape, device=dev, generator=generator)
    pred = model(noisy, t, prev, batch.cursor, batch.cls)
    # Most pixels repeat the previous frame; the ones that change (a cursor, a menu, a window)
    # are what the model is for, so they weigh more (about 1% of the pixels for a cursor move).
    changed = ((batch.next - batch.prev).abs().amax(dim=1, keepdim=True) > 1e-3).float()
    w = 1.0 + c.changed_weight * changed
    err = (pred - batch.next) ** 2
    loss = (w * err).mean() / w.mean()
    with torch.no_grad():
        mse_changed = ((err * changed).sum() / (3 * changed.sum()).clamp(min=1)).item()
    return loss, {"changed_frac": changed.mean().item(), "mse_changed": mse_changed}


@torch.no_grad()
def sample_next(
    model: NextFrameModel,
    prev: torch.Tensor,
    cursor: torch.Tensor,
    cls: torch.Tensor,
    steps: int = DEFAULT_STEPS,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The next frames (B, 3, S, S) by ``steps``-step DDIM from pure noise (x0 prediction)."""
    if not 1 <= steps <= model.config.train_timesteps:
        raise ValueError(f"sampler steps must be 1..{model.config.train_timesteps}, got {steps}")
    sched = make_scheduler(model.config.train_timesteps)  # its own: set_timesteps mutates it
    sched.set_timesteps(steps)
    x = torch.randn(prev.shape, device=prev.device, generator=generator)
    for t in sched.timesteps:
        tt = torch.full((prev.shape[0],), int(t), device=prev.device, dtype=torch.long)
        x0 = model(x, tt, prev, cursor, cls)
        x = sched.step(x0, t, x, eta=0.0).prev_sample
    return x.clamp(-1, 1)


KEEP_BELOW = 16  # default of FramePredictor.keep_below (0-255 levels)


@lru_cache(maxsize=8)
def _palette_tensor(device: str) -> torch.Tensor:
    return torch.from_numpy(palette().astype(np.float32)).to(device)


def to_levels(x: torch.Tensor) -> torch.Tensor:
    """float (B, 3, S, S) in [-1, 1] -> float colour levels 0..255, rounded."""
    return ((x.clamp(-1, 1) + 1.0) * 127.5).round()


def snap_to_palette(levels: torch.Tensor) -> torch.Tensor:
    """Each pixel of (B, 3, S, S) colour levels replaced by the nearest colour the desktop draws."""
    pal = _palette_tensor(str(levels.device))  # (K, 3)
    b, _, h, w = levels.shape
    flat = levels.permute(0, 2, 3, 1).reshape(-1, 3)
    nearest = torch.cdist(flat, pal).argmin(dim=1)
    return pal[nearest].reshape(b, h, w, 3).permute(0, 3, 1, 2)


def finish_frames(pred: torch.Tensor, prev: torch.Tensor, keep_below: int = KEEP_BELOW, snap: bool = True) -> torch.Tensor:
    """What the demo shows, from the sampler's output ``pred`` and the frame it was drawn from
    (both float (B, 3, S, S) in [-1, 1]); returns the same, on whole colour levels.

    ``keep_below``: a pixel within this many levels (0-255, every channel) of the previous frame
    keeps the previous colour exactly. ``snap``: every other pixel takes the nearest colour of the
    desktop's palette (:func:`~neuralos_example.simulator.palette`). In closed loop the model reads
    its own output; without these, faint residual noise compounds frame after frame into texture.
    Real changes (a cursor, a window) are far above the threshold and land on real colours.
    """
    out, before = to_levels(pred), to_levels(prev)
    if snap:
        out = snap_to_palette(out)
    if keep_below > 0:
        same = ((out - before).abs() < keep_below).all(dim=1, keepdim=True)
        out = torch.where(same, before, out)
    return out / 127.5 - 1.0


class FramePredictor:
    """Autoregressive next-frame prediction for one screen at a time (the demo, rollouts);
    frames are finished by :func:`finish_frames` (``keep_below``, ``snap``)."""

    def __init__(self, model: NextFrameModel, steps: int = DEFAULT_STEPS, seed: int = 0, keep_below: int = KEEP_BELOW, snap: bool = True) -> None:
        self.model = model.eval()
        self.steps = steps
        self.keep_below = keep_below
        self.snap = snap
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def predict(self, frame: np.ndarray, action: Action, steps: int | None = None) -> np.ndarray:
        """The model's frame after ``action`` on ``frame`` (uint8 (S, S, 3))."""
        return self.predict_many([frame], [action], steps)[0]

    def predict_many(self, frames: list[np.ndarray], actions: list[Action], steps: int | None = None) -> list[np.ndarray]:
        """One batched sampling for several screens (the demo's concurrent sessions)."""
        c = self.model.config
        for a in actions:
            a.check_bounds(c.size)
        prev = frames_to_tensor(np.stack(frames), self.device)
        cursor = cursor_maps(np.array([a.x for a in actions]), np.array([a.y for a in actions]), c.size, c.cursor_sigma, self.device)
        cls = torch.tensor([action_class(a.event, a.key_index) for a in actions], device=self.device)
        out = sample_next(self.model, prev, cursor, cls, steps or self.steps, self.generator)
        return list(tensor_to_frames(finish_frames(out, prev, self.keep_below, self.snap)))


# --------------------------------------------------------------------------- files


def save_model(model: NextFrameModel, path: str | Path, meta: dict[str, Any] | None = None) -> None:
    """``<path>.safetensors`` (fp16: the shipped base stays small) and ``<path>.json`` (config + meta)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path.with_suffix(".safetensors")))
    doc = {"config": model.config.model_dump(mode="json"), "meta": meta or {}}
    path.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")


def load_model(path: str | Path) -> NextFrameModel:
    """A model saved by :func:`save_model` (weights back in fp32)."""
    path = Path(path)
    try:
        doc = json.loads(path.with_suffix(".json").read_text())
        config = ModelConfig.model_validate(doc["config"])
        tensors = load_file(str(path.with_suffix(".safetensors")))
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot load a next-frame model from {path}: {e}") from None
    model = NextFrameModel(config)
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    return model


BASE_CHECKPOINT = Path(__file__).parent / "checkpoints" / "base"
