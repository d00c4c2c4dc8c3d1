# Export video latents of the released (or your) pipeline for a diffusion model: the eval
# protocol's 17-frame window at 256x256.
_base_ = ["../_base_/default_encode.py"]

dataset = dict(num_frames=17, image_size=(256, 256))
ckpt_path = "hpcai-tech/OpenSora-VAE-v1.2"
save_dir = "latents/vae_video"
