# Reconstruct single images (1-frame clips) with the pipeline.
_base_ = ["../_base_/default_inference.py"]

dataset = dict(num_frames=1, image_size=(256, 256))
ckpt_path = "hpcai-tech/OpenSora-VAE-v1.2"
save_dir = "samples/vae_image"
