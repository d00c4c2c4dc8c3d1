"""Latent export for diffusion training: shards of posterior moments, a parquet index, a stamped
manifest with exact statistics (`run_export`), and the training-side reader (`LatentDataset`).

Names are imported on first use (PEP 562)."""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "run_export": "runner", "LatentDataset": "reader", "LatentsMismatchError": "reader",
    "ExportError": "storage",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
