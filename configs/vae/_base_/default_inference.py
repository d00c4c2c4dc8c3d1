# Every inference setting and its default. A key not defined here is rejected as a typo.
_base_ = ["./model_v1_2.py"]

dataset = dict(
    data_path=None,
    num_frames=17,
    frame_interval=1,
    image_size=(256, 256),
    transform_name="center",
    max_retries=20,
)
num_workers = 2
ckpt_path = None  # pipeline checkpoint: ours (save_pretrained / training step dir) or the released one
save_dir = "samples/vae_video"  # writes <save_dir>_ori, _rec, _spatial (NNN.mp4 / NNN.png) and _metrics.json
overwrite = False  # True: delete earlier NNN.mp4/NNN.png in those dirs (else an error: the eval would mix runs)
num_samples = None  # None = every row of the CSV
batch_size = 1
dtype = "fp32"  # "bf16" on CUDA is faster
sample = False  # False: posterior mode everywhere (deterministic); True: sample latents
fps = 24.0  # float: 23.976 and 29.97 are common
lossless = False  # lossless video output: metrics then see exactly the tensors
save_grid = False  # also write <save_dir>_grid: ori | spatial | rec side by side
tiling = False  # pipe.enable_tiling(): bounded memory for large frames (e.g. 1080p), slightly different output
cal_stats = False  # per-channel mean/std of the latents (how shift/scale were made)
seed = 42

# Read timeout: a sample read (open + decode) that does not finish within this many seconds stops
# the run with an error naming the file (a hung network mount, a device that never answers), with
# or without DataLoader workers. Legitimate reads of long or 4K clips take seconds, not minutes.
dataset.update(read_timeout_s=600.0)

# Output names: "index" = the row index, zero-padded (`003.mp4`, the reference's layout); "stem" =
# the source file's name without extension (`beach.mp4`; two rows with one stem are refused).
# Either way `<save_dir>_metrics.json` maps each name to its source path (`sources`).
output_names = "index"
