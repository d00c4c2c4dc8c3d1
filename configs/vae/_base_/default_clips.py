# Settings shared by inference (default_inference.py) and the latent export (default_encode.py):
# the clips a run reads, the checkpoint and how it is computed. Each of those two schema files adds
# only its own outputs, so neither accepts a key its run would not read.
_base_ = ["./model_v1_2.py"]

# Architecture, weights and latent statistics come from the checkpoint (ckpt_path): of the model
# section only the chunk sizes apply here (defaults: the released model's, from model_v1_2.py).
# Any other model.* key would do nothing, so it is refused as unknown.
model = dict(
    _delete_=True,
    micro_frame_size=_base_.model.micro_frame_size,  # frames per temporal VAE chunk; None = whole clip
    spatial=dict(micro_batch_size=_base_.model.spatial.micro_batch_size),  # frames per spatial VAE call
)

dataset = dict(
    data_path=None,
    num_frames=17,
    frame_interval=1,
    image_size=(256, 256),
    transform_name="center",
)  # an unreadable sample is skipped and reported, never replaced: no max_retries here
num_workers = 2
ckpt_path = None  # pipeline checkpoint: ours (save_pretrained / training step dir) or the released one
num_samples = None  # None = every row of the CSV
batch_size = 1
dtype = "fp32"  # "bf16" on CUDA is faster
tiling = False  # pipe.enable_tiling(): bounded memory for large frames (e.g. 1080p), slightly different output
seed = 42

# Read timeout: a sample read (open + decode) that does not finish within this many seconds stops
# the run with an error naming the file (a hung network mount, a device that never answers), with
# or without DataLoader workers. Legitimate reads of long or 4K clips take seconds, not minutes.
dataset.update(read_timeout_s=600.0)
