"""The quickstart demo: sample data from the bundled clip, stage 0 (tiny spatial VAE), orchestration."""
