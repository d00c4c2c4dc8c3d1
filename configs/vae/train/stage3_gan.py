# Stage 3 with the adversarial phase: the ./stage3.py recipe (pixel L1 + 0.1 LPIPS + 1e-6 KL on
# random 1..33-frame prefixes) plus a 3D StyleGAN discriminator, with the reference's adversarial
# settings (train_vae.py's defaults). Start from a stage-3 (or stage-2) checkpoint with --ckpt-path.
# The discriminator judges 33-frame windows at 256x256: shorter prefixes and images repeat their
# last frame. Cost: benchmarks/RESULTS.md ("Adversarial phase").
_base_ = ["./stage3.py"]

# _delete_: the schema value is None (off); replace it, do not merge.
discriminator = dict(_delete_=True, filters=128, channel_multipliers=(2, 4, 4, 4, 4), num_groups=32)  # 90.7 M parameters
# The rest equals the schema's defaults (configs/vae/_base_/default_train.py), listed to be read here.
discriminator_start = -1  # on from the first step
discriminator_factor = 1.0
generator_factor = 0.5
generator_loss_type = "hinge"
discriminator_loss_type = "hinge"
lecam_loss_weight = None
gradient_penalty_loss_weight = None
# The discriminator's AdamW: the reference's (the VAE's lr and weight decay, default betas).
discriminator_lr = 1e-5
discriminator_adam_betas = (0.9, 0.999)
discriminator_adam_eps = 1e-8
discriminator_weight_decay = 0.0
discriminator_grad_clip = 1.0
outputs = "outputs/vae_stage3_gan"
discriminator_lr_schedule = dict(kind="constant", warmup_steps=0, min_lr_ratio=0.0)  # the reference: none
