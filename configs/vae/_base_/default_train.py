# Every training setting and its default (the reference stage-1 values). Stage configs inherit
# this file and override; a key that is not defined here is rejected as a typo.
_base_ = ["./model_v1_2.py"]

dataset = dict(
    data_path=None,  # CSV/parquet with a `path` column (set with --data-path)
    num_frames=17,
    frame_interval=1,
    image_size=(256, 256),
    transform_name="center",  # or "resize_crop"
    max_retries=20,  # consecutive unreadable samples before the dataset gives up
)
num_workers = 8
max_skip_fraction = 0.05  # abort when more than this fraction of read samples were unreadable

# Mixing: "mixed_video_image" keeps only frame 0 with probability mixed_image_ratio;
# "mixed_video_random" trains on a random prefix of length U{1..num_frames}; None = full clips.
mixed_strategy = "mixed_video_image"
mixed_image_ratio = 0.2

# Losses (reference normalisation: L1 summed over C*H*W per frame, averaged over frames).
use_real_rec_loss = False  # pixel L1 + perceptual + KL
use_z_rec_loss = True  # L1 between spatial latents x_z and the temporal VAE's reconstruction
use_image_identity_loss = True  # on 1-frame steps: L1 between x_z and the temporal latent z
perceptual_loss_weight = 0.1  # LPIPS(VGG), added to every pixel's L1
kl_loss_weight = 1e-6
perceptual_backbone_path = None  # VGG16 ImageNet weights file; default: torchvision cache, then
# the converted file of tools/install_lpips_backbones.py
perceptual_random_backbone = False  # tests only: a random VGG when no weights are installed
detach_z_target = True  # reference did not detach x_z: a trainable spatial encoder can collapse

# Optimisation
batch_size = 1  # per GPU
lr = 1e-5
weight_decay = 0.0
adam_betas = (0.9, 0.999)
adam_eps = 1e-8
grad_clip = 1.0
ema_decay = None  # e.g. 0.9999 keeps an EMA copy of the weights
dtype = "bf16"  # autocast dtype on CUDA ("bf16" or "fp32"; fp16 would need loss scaling); CPU runs fp32
grad_checkpoint = True  # recompute each ResBlock in backward: less memory, ~30% more time
parallel = "ddp"  # "ddp" or "fsdp" (FSDP2 fully_shard)
max_nonfinite_steps = 5  # consecutive non-finite losses before aborting
# torch.compile the temporal VAE and the LPIPS network (opt-in: on a small CPU compiling costs more
# than it saves, see benchmarks/RESULTS.md; clips of changing length trigger recompiles).
compile = False
deterministic = False  # torch.use_deterministic_algorithms for exact CPU resume checks

# Length and bookkeeping
seed = 42
epochs = 100
max_steps = None  # stop (with a checkpoint) after this many global steps
outputs = "outputs"  # checkpoints, tensorboard/, train.log; locked by the run that uses it
# A fresh run into outputs that already hold checkpoints (or a --load rollback past newer ones) is
# refused, since it would later replace them; True allows it (pruning still keeps others' checkpoints).
overwrite = False
ckpt_path = None  # initial weights: a pipeline checkpoint dir or hub id
load = None  # resume from a training checkpoint dir, or "auto" for the newest under outputs
log_every = 1
ckpt_every = 1000  # 0: only the final checkpoint
keep_last_ckpts = 3
preview_every = 500  # TensorBoard input|recon image every N steps (0 = never)
wandb = False

# Preflight checks before step 1 (opensora_vae/training/preflight.py; results in
# <outputs>/preflight.json). Seconds at start instead of an abort or a useless run hours later.
preflight_rows = 500  # rows whose video frame count is read (headers only; an evenly spaced sample
# of larger tables): too-short clips are counted, and the run refused when most are (0 = no check)
preflight_clips = 4  # clips reconstructed by the spatial VAE alone, PSNR logged (0 = no check)
preflight_min_psnr = 15.0  # dB: below it a loud warning (a frozen spatial VAE bounds every later stage;
# an SD/SDXL VAE scores ~25-30 dB on natural video, a random one ~10)
