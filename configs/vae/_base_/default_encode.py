# Every latent-export setting and its default (scripts/encode_latents.py). A key not defined here
# is rejected as a typo. The clip window (dataset), checkpoint, workers, batch and compute dtype
# are those of inference (default_clips.py); inference's reconstruction outputs (fps, lossless,
# save_grid, overwrite, sample, cal_stats, output_names) are not settings of an export, which
# stores the posterior moments and always makes the statistics.
_base_ = ["./default_clips.py"]

save_dir = "latents/vae_video"  # the export folder: manifest.json, index.parquet, shards/

# ---------------------------------------------------------------- latent export (issue 21)
export = dict(
    # False: the eval protocol's window (dataset.num_frames frames from frame 0, stride
    # dataset.frame_interval; shorter videos are skipped). True: every frame_interval-th frame of
    # the whole video, encoded one micro-frame chunk at a time (bounded memory).
    whole_video=False,
    latent_dtype="bf16",  # storage dtype of the posterior mean and log-variance: bf16, fp16 or fp32
    shard_size=256,  # CSV rows per shard file (10 M clips = 40 k files, not 10 M)
    qa_every=100,  # decode every Nth row's stored latents back and record its PSNR in the index (0 = off)
)
