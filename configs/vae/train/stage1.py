# Stage 1: temporal VAE on the frozen spatial VAE's latents, plus the identity loss on images.
# Paper: 380k steps on 8 GPUs, 20% images / 80% 17-frame videos.
_base_ = ["../_base_/default_train.py"]

dataset = dict(num_frames=17, image_size=(256, 256))
model = dict(freeze_spatial=True)
mixed_strategy = "mixed_video_image"
mixed_image_ratio = 0.2
use_real_rec_loss = False
use_z_rec_loss = True
use_image_identity_loss = True
outputs = "outputs/vae_stage1"
