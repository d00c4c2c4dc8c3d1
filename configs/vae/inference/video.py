# Reconstruct videos with the released (or your) pipeline checkpoint.
_base_ = ["../_base_/default_inference.py"]

dataset = dict(num_frames=17, image_size=(256, 256))
# The released pipeline checkpoint's hub id; its one place (code reads it: config.released_checkpoint).
ckpt_path = "hpcai-tech/OpenSora-VAE-v1.2"
save_dir = "samples/vae_video"
