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
# the converted file of tools/install_weights.py
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

# Resuming (training/checkpoint.py): a checkpoint holding state that this config does not continue
# (e.g. an EMA, and no ema_decay) is refused, so that state is never lost silently. Name such state
# entries here to drop them on purpose, e.g. drop_state = ["ema"]; the newest checkpoint holding
# them is still kept by pruning.
drop_state = []

# Learning-rate schedule (training/schedule.py), per optimizer step: an optional linear warmup over
# `warmup_steps`, then "constant" (the reference: lr throughout), "linear" or "cosine" decay to
# min_lr_ratio * lr at the last step (max_steps, or epochs x steps per epoch). Saved in checkpoints.
lr_schedule = dict(
    kind="constant",
    warmup_steps=0,
    min_lr_ratio=0.0,
)

# Adversarial phase (training/adversarial.py; off by default: the three stages train without it,
# configs/vae/train/stage3_gan.py turns it on). Names and defaults are the reference train_vae.py's.
# discriminator = dict(filters=128, channel_multipliers=(2, 4, 4, 4, 4), num_groups=32) turns it on:
# a StyleGANDiscriminator3D judging windows of dataset.num_frames frames at dataset.image_size
# (shorter clips and images repeat their last frame to fill the window).
discriminator = None
discriminator_start = -1  # no adversarial terms (and no D updates) in the first N steps; -1/0: from step 1
discriminator_factor = 1.0  # weight of the D loss and of the generator term; 0 turns both off
generator_factor = 0.5  # the generator term is factor × adaptive weight × g_loss
generator_loss_type = "hinge"  # or "non-saturating"
discriminator_loss_type = "hinge"  # or "vanilla", "non-saturating"
lecam_loss_weight = None  # e.g. 0.001: LeCam regularisation of D (EMAs of the logits, decay 0.999)
gradient_penalty_loss_weight = None  # e.g. 10: WGAN-GP on the real clips
# The discriminator's own AdamW (the reference used the VAE's lr and weight decay) and grad clip.
discriminator_lr = 1e-5
discriminator_adam_betas = (0.9, 0.999)
discriminator_adam_eps = 1e-8
discriminator_weight_decay = 0.0
discriminator_grad_clip = 1.0  # None: no clipping
# Its learning-rate schedule (as lr_schedule), over the steps it trains: discriminator_start to the end.
discriminator_lr_schedule = dict(
    kind="constant",
    warmup_steps=0,
    min_lr_ratio=0.0,
)

# Read timeout: a sample read (open + decode) that does not finish within this many seconds stops
# the run with an error naming the file (a hung network mount, a device that never answers), with
# or without DataLoader workers. Legitimate reads of long or 4K clips take seconds, not minutes.
dataset.update(read_timeout_s=600.0)

# Held-out validation (README "Validation while training"): every val_every steps and after the
# last one, the posterior-mode reconstructions of the same clips of val_data_path are scored as the
# eval scores files (the clip is read as inference reads it: dataset.num_frames frames at
# dataset.frame_interval from frame 0, the dataset transform to dataset.image_size). Results:
# TensorBoard val/..., val_ema/... (EMA on), <outputs>/val_history.jsonl, <outputs>/val_best.json.
# None = off.
val_data_path = None  # CSV/parquet with a `path` column, like --data-path
val_every = 1000  # steps between validations
val_max_clips = 32  # the table's first N rows (None = every row)
val_metrics = ("ssim", "psnr", "lpips")  # any of the eval's: ssim psnr lpips flolpips fvd (fvd: >= 256 clips)
val_best_metric = "lpips"  # one of val_metrics: its best step is recorded in val_best.json

# Preflight checks before step 1 (opensora_vae/training/preflight.py; results in
# <outputs>/preflight.json). Seconds at start instead of an abort or a useless run hours later.
preflight_rows = 500  # rows whose video frame count is read (headers only; an evenly spaced sample
# of larger tables): too-short clips are counted, and the run refused when most are (0 = no check)
preflight_clips = 4  # clips reconstructed by the spatial VAE alone, PSNR logged (0 = no check)
preflight_min_psnr = 15.0  # dB: below it a loud warning (a frozen spatial VAE bounds every later stage;
# an SD/SDXL VAE scores ~25-30 dB on natural video, a random one ~10)
