# Stage 1: temporal VAE on the frozen spatial VAE's latents, plus the identity loss on images.
# Paper: 380k steps on 8 GPUs, 20% images / 80% 17-frame videos. The defaults
# (../_base_/default_train.py) are this recipe; only the run folder differs.
# Clips: videos need >= 17 frames (dataset.num_frames x frame_interval); images and 1-frame videos
# are static clips. `python scripts/make_csv.py DIR CSV --min-frames 17` leaves shorter ones out.
_base_ = ["../_base_/default_train.py"]

outputs = "outputs/vae_stage1"
