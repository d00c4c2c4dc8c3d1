"""How many leading frames each step trains on (the stage's clip mixing), the same on every rank."""

from __future__ import annotations

import random

# None: full clips; "mixed_video_image": only frame 0 with probability mixed_image_ratio;
# "mixed_video_random": a random prefix of length U{1..num_frames}.
MIXED_STRATEGIES = (None, "mixed_video_image", "mixed_video_random")


def mixed_num_frames(strategy: str | None, image_ratio: float, num_frames: int, seed: int, step: int) -> int:
    """How many leading frames step `step` trains on; the same on every rank.

    Drawn from a generator seeded by (seed, step) only, never from global RNG state, so ranks
    agree without communicating and a resumed run draws what an uninterrupted one would.
    (`random.Random` hashes a str seed with SHA-512: stable across processes and machines.)
    """
    if strategy is None:
        return num_frames
    rng = random.Random(f"opensora_vae.mixed:{seed}:{step}")
    if strategy == "mixed_video_image":
        return 1 if rng.random() < image_ratio else num_frames
    if strategy == "mixed_video_random":
        return rng.randint(1, num_frames)
    raise ValueError(f"unknown mixed_strategy {strategy!r}, expected one of {MIXED_STRATEGIES}")
