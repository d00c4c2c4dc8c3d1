"""Open-Sora 1.2 video VAE: models, data, training, inference and evaluation."""
