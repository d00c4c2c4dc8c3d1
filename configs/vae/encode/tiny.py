# Tiny CPU export for tests and benchmarks: the architecture comes from the checkpoint (e.g. a
# step dir of configs/vae/train/tiny/stage1.py), only the clip size and shards are small here.
_base_ = ["../_base_/default_encode.py"]

dataset = dict(num_frames=17, image_size=(64, 64))
num_workers = 0
save_dir = "latents/tiny_vae"
export = dict(shard_size=4, qa_every=2)
