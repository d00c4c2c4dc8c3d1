"""`EvalSettings`: every setting of an evaluation, in one validated, frozen object.

Built once (from the eval CLI with :meth:`EvalSettings.from_cli`, or directly by inference and
in-loop validation) and passed to everything that scores: `evaluate_dirs`, `MetricSuite`,
`score_pair`, `summarize_results`. The device is resolved here, once. Every range rule of an eval
setting lives in :meth:`EvalSettings.__post_init__`, so a bad value is refused before any file is
read, whoever builds the settings.

Defaults are the reference eval script's flags (`--num_frames 100`, `--resolution 336`, no crop,
`--batch_size 2`, the device cuda if available); a named protocol (`protocol.PROTOCOL_CARDS`)
may fix some of them (StyleGAN-V: 16 consecutive frames).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from .protocol import PROTOCOL_CARDS, EvalError, ProtocolCard
from .ssim import WINDOW_SIZE as SSIM_WINDOW  # a frame smaller than SSIM's window has no valid region

if TYPE_CHECKING:
    import torch

# What the eval can compute, in the order it reports them.
EVAL_METRICS = ("ssim", "psnr", "lpips", "flolpips", "fvd")
# The reference's metrics, the default: FVD needs the I3D weights, 16+ frames and many videos.
DEFAULT_EVAL_METRICS = ("ssim", "psnr", "lpips", "flolpips")
# Crops feed the spatial VAE's 8x downsampling when a validation reuses these settings.
CROP_MULTIPLE = 8


def resolve_device(device: "str | torch.device | None") -> "torch.device":
    """cpu, cuda or cuda:N (None: cuda if available); anything else is an EvalError."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise EvalError(f"unknown device {str(device)!r}; use cpu, cuda or cuda:N")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise EvalError(f"device {parsed} requested but CUDA is not available (torch.cuda.is_available() is False)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise EvalError(f"device {parsed} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return parsed


def _positive_int(name: str, value: Any, optional: bool = False, minimum: int = 1) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise EvalError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class EvalSettings:
    """The settings of one evaluation. Construct with keywords; invalid values raise EvalError."""

    metrics: tuple[str, ...] = DEFAULT_EVAL_METRICS
    num_frames: int = 100            # frames per video, from index 0 (fewer if the video is shorter)
    sample_rate: int = 1             # stride between evaluated frames
    resolution: int | None = 336     # short side after resizing; None: frames as decoded
    crop_size: int | None = None     # centre crop after resizing; None: no crop
    device: Any = None               # cpu, cuda, cuda:N or None (cuda if available); resolved to torch.device
    batch_size: int = 2              # videos per network call (and OSP's FVD mini-batch)
    subset_size: int | None = None   # evaluate only the first N pairs (by name)
    decode_workers: int | None = None  # decode threads; None: one per core, at most 8
    skip_bad: bool = False           # unreadable media are counted skips instead of errors
    pwc_weights: str | None = None   # PWC-Net weights for FloLPIPS (None: the default location)
    protocol: str = "opensora"       # a name of protocol.PROTOCOL_CARDS
    bootstrap: int = 1000            # resamples of the videos for the 95% intervals (0: none)
    seed: int = 0                    # of the bootstrap resampling
    worst_k: int = 5                 # worst videos listed per metric
    # Frames per temporal-VAE chunk (the model's micro_frame_size, configs/vae/_base_/model_v1_2.py):
    # per-position PSNR/SSIM inside it show the chunk seams.
    chunk_frames: int = 17

    def __post_init__(self) -> None:
        metrics = (self.metrics,) if isinstance(self.metrics, str) else tuple(self.metrics)
        unknown = sorted(set(metrics) - set(EVAL_METRICS))
        if unknown or not metrics:
            raise EvalError(f"unknown or no metrics {unknown or list(metrics)}; choose from {list(EVAL_METRICS)}")
        object.__setattr__(self, "metrics", tuple(m for m in EVAL_METRICS if m in metrics))
        if self.protocol not in PROTOCOL_CARDS:
            raise EvalError(f"unknown protocol {self.protocol!r}; choose from {sorted(PROTOCOL_CARDS)}")
        for name in ("num_frames", "sample_rate", "batch_size", "chunk_frames"):
            _positive_int(name, getattr(self, name))
        for name in ("resolution", "crop_size", "subset_size", "decode_workers"):
            _positive_int(name, getattr(self, name), optional=True)
        for name in ("bootstrap", "seed", "worst_k"):
            _positive_int(name, getattr(self, name), minimum=0)
        if not isinstance(self.skip_bad, bool):
            raise EvalError(f"skip_bad must be true or false, got {self.skip_bad!r}")
        if self.crop_size is not None:
            if self.crop_size % CROP_MULTIPLE or self.crop_size < SSIM_WINDOW:
                raise EvalError(f"crop_size must be a multiple of {CROP_MULTIPLE} and at least {SSIM_WINDOW} "
                                f"(the SSIM window), got {self.crop_size}")
            if self.resolution is not None and self.crop_size > self.resolution:
                raise EvalError(f"crop_size {self.crop_size} is larger than the resized short side "
                                f"(resolution {self.resolution})")
        if self.resolution is not None and self.resolution < SSIM_WINDOW and "ssim" in self.metrics:
            raise EvalError(f"resolution {self.resolution} is smaller than the SSIM window ({SSIM_WINDOW})")
        card = self.card
        for name, value in card.fixed.items():
            if getattr(self, name) != value:
                raise EvalError(f"protocol {self.protocol} fixes {name} = {value} ({card.fixed_why}); "
                                f"got {getattr(self, name)}")
        if "fvd" in self.metrics and self.num_frames < card.fvd_min_frames:
            raise EvalError(f"fvd under protocol {self.protocol} needs {card.fvd_min_frames} evaluated frames per "
                            f"video: pass --num_frames >= {card.fvd_min_frames} (got {self.num_frames})")
        if self.pwc_weights is not None:
            object.__setattr__(self, "pwc_weights", os.fspath(self.pwc_weights))
        object.__setattr__(self, "device", resolve_device(self.device))

    @property
    def card(self) -> ProtocolCard:
        return PROTOCOL_CARDS[self.protocol]

    def replace(self, **changes: Any) -> "EvalSettings":
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_cli(cls, given: Mapping[str, Any]) -> "EvalSettings":
        """Settings from the flags a user gave (names of fields; flags not given are absent):
        the protocol's defaults first, then the flags."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(given) - fields)
        if unknown:
            raise EvalError(f"not eval settings: {unknown}")
        protocol = given.get("protocol", cls.protocol)
        defaults = PROTOCOL_CARDS[protocol].defaults if protocol in PROTOCOL_CARDS else {}
        return cls(**{**defaults, **given})

    @classmethod
    def from_config(cls, cfg: Any, **fields: Any) -> "EvalSettings":
        """Settings of the clips a run config reads (inference, in-loop validation): its window
        (`dataset.num_frames` at `dataset.frame_interval` from frame 0) and the model's chunk
        (`model.micro_frame_size`; None encodes the whole clip at once, so the clip is one chunk);
        ``fields``: the other settings."""
        return cls(num_frames=cfg.dataset.num_frames, sample_rate=cfg.dataset.frame_interval,
                   chunk_frames=cfg.model.micro_frame_size or cfg.dataset.num_frames, **fields)

    def describe(self) -> dict:
        """The JSON's ``protocol``: the card (every choice; ``name`` is the protocol's name) and
        the values of this run."""
        card = self.card.as_dict()
        card.update(
            metrics=list(self.metrics),
            num_frames=self.num_frames,
            sample_rate=self.sample_rate,
            frame_indices=self.card.frame_indices.format(num_frames=self.num_frames, sample_rate=self.sample_rate,
                                                         last=self.sample_rate * (self.num_frames - 1)),
            resolution=self.resolution,
            crop_size=self.crop_size,
            bootstrap=self.bootstrap,
            seed=self.seed,
            chunk_frames=self.chunk_frames,
            device=str(self.device),
        )
        if self.card.aggregation == "minibatch_frame":  # the mini-batches are part of the numbers
            card["batch_size"] = self.batch_size
        return card
