# Stage 3: reconstruct pixels (L1 + 0.1 LPIPS(VGG) + 1e-6 KL) with random clip lengths up to 33.
# Paper: 540k steps on 24 GPUs. Start from stage 2 with --ckpt-path.
_base_ = ["../_base_/default_train.py"]

dataset = dict(num_frames=33, image_size=(256, 256))
model = dict(freeze_spatial=False)
mixed_strategy = "mixed_video_random"
use_real_rec_loss = True
use_z_rec_loss = False
use_image_identity_loss = False
outputs = "outputs/vae_stage3"
