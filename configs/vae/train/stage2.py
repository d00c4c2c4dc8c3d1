# Stage 2: no identity loss; spatial VAE trainable; reconstruct the 2D-compressed video latents.
# Paper: 260k steps on 8 GPUs. Start from stage 1 with --ckpt-path.
_base_ = ["../_base_/default_train.py"]

dataset = dict(num_frames=17, image_size=(256, 256))
model = dict(freeze_spatial=False)
mixed_strategy = "mixed_video_image"
mixed_image_ratio = 0.2
use_real_rec_loss = False
use_z_rec_loss = True
use_image_identity_loss = False
outputs = "outputs/vae_stage2"
