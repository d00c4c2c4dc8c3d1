"""The quickstart: sample data from the bundled clip, stage 0 (tiny spatial VAE), the real entry
scripts for stages 1-3, inference and eval, and a summary.

Run from a checkout: `bash scripts/quickstart.sh` (or `python -m examples.quickstart` from the
repository root). It lives outside the `opensora_vae` package because it shells out to
`scripts/` and `eval/` and reads `configs/` and `assets/`, which only a checkout has.
"""
