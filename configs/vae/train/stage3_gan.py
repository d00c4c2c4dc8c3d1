# Stage 3 with the adversarial phase: the ./stage3.py recipe (pixel L1 + 0.1 LPIPS + 1e-6 KL on
# random 1..33-frame prefixes) plus a 3D StyleGAN discriminator. Every other adversarial setting
# (loss types, factors, the discriminator's AdamW and schedule) is the schema's default
# (configs/vae/_base_/default_train.py: the reference train_vae.py's). Start from a stage-3 (or
# stage-2) checkpoint with --ckpt-path. The discriminator judges 33-frame windows at 256x256:
# shorter prefixes and images repeat their last frame. Cost: benchmarks/RESULTS.md ("Adversarial phase").
_base_ = ["./stage3.py"]

# _delete_: the schema value is None (off); replace it, do not merge.
discriminator = dict(_delete_=True, filters=128, channel_multipliers=(2, 4, 4, 4, 4), num_groups=32)  # 90.7 M parameters
outputs = "outputs/vae_stage3_gan"
