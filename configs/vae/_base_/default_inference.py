# Every inference setting and its default. A key not defined here is rejected as a typo.
# The clips, checkpoint and compute settings are shared with the latent export: default_clips.py.
_base_ = ["./default_clips.py"]

save_dir = "samples/vae_video"  # writes <save_dir>_ori, _rec, _spatial (NNN.mp4 / NNN.png) and _metrics.json
overwrite = False  # True: delete earlier NNN.mp4/NNN.png in those dirs (else an error: the eval would mix runs)
sample = False  # False: posterior mode everywhere (deterministic); True: sample latents
fps = 24.0  # float: 23.976 and 29.97 are common
lossless = False  # lossless video output: metrics then see exactly the tensors
save_grid = False  # also write <save_dir>_grid: ori | spatial | rec side by side
cal_stats = False  # per-channel mean/std of the latents (how shift/scale were made)

# Output names: "index" = the row index, zero-padded (`003.mp4`, the reference's layout); "stem" =
# the source file's name without extension (`beach.mp4`; two rows with one stem are refused).
# Either way `<save_dir>_metrics.json` maps each name to its source path (`sources`).
output_names = "index"
