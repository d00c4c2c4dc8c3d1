# The released Open-Sora 1.2 VAE pipeline (hpcai-tech/OpenSora-VAE-v1.2), 393.3 M parameters.
model = dict(
    # Full pipeline checkpoint (save_pretrained dir or hub id). When set, the spatial VAE is built
    # from its architecture config and all weights come from this checkpoint.
    from_pretrained=None,
    freeze_spatial=True,
    # The temporal VAE sees independent 17-frame chunks; None = the whole clip at once.
    micro_frame_size=17,
    # Per-channel latent normalisation for diffusion: z_norm = (z - shift) / scale.
    shift=(-0.10, 0.34, 0.27, 0.98),
    scale=(3.85, 2.32, 2.33, 3.06),
    spatial=dict(
        from_pretrained="PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers",  # hub id or local dir
        subfolder="vae",
        local_files_only=False,
        config=None,  # an AutoencoderKL config dict builds random weights instead (tests, demo)
        micro_batch_size=4,  # frames per spatial VAE call: bounds memory for long clips
        scaling_factor=0.18215,  # SD's value: the released weights depend on it, not SDXL's 0.13025
    ),
    temporal=dict(
        in_out_channels=4,
        latent_embed_dim=4,
        embed_dim=4,
        filters=128,
        num_res_blocks=4,
        channel_multipliers=(1, 2, 2, 4),
        temporal_downsample=(False, True, True),
        num_groups=32,
    ),
)
