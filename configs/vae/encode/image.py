# Export image latents (1-frame clips; a video row contributes its first frame).
_base_ = ["../_base_/default_encode.py"]

dataset = dict(num_frames=1, image_size=(256, 256))
ckpt_path = "hpcai-tech/OpenSora-VAE-v1.2"
save_dir = "latents/vae_image"
