# Stage 2: reconstruct the 2D-compressed video latents with the spatial VAE trainable.
# Paper: 260k steps on 8 GPUs. Start from stage 1 with --ckpt-path.
# Clips: videos need >= 17 frames, as in stage 1 (`make_csv.py DIR CSV --min-frames 17`).
_base_ = ["./stage1.py"]

model = dict(freeze_spatial=False)  # the spatial encoder adapts to the temporal VAE
use_image_identity_loss = False  # images only ever pass the identity in stage 1
outputs = "outputs/vae_stage2"
