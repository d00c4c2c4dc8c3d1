# Stage 3: reconstruct pixels (L1 + 0.1 LPIPS(VGG) + 1e-6 KL) with random clip lengths up to 33.
# Paper: 540k steps on 24 GPUs. Start from stage 2 with --ckpt-path.
# Clips: videos need >= 33 frames (the random prefix is cut from a 33-frame clip); shorter ones are
# skipped, and the run refused at start when most are: `python scripts/make_csv.py DIR CSV --min-frames 33`.
_base_ = ["./stage2.py"]

dataset = dict(num_frames=33)  # random prefixes U{1..33}: lengths that cross a 17-frame chunk
mixed_strategy = "mixed_video_random"
use_real_rec_loss = True  # pixel L1 + perceptual + KL through the spatial decoder
use_z_rec_loss = False
outputs = "outputs/vae_stage3"
