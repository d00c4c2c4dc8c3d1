# Tiny CPU inference for tests and the quickstart demo: the architecture comes from the checkpoint
# (e.g. a step dir of configs/vae/train/tiny/stage1.py), only the clip size is small here.
_base_ = ["../_base_/default_inference.py"]

dataset = dict(num_frames=17, image_size=(64, 64))
num_workers = 0
save_dir = "samples/tiny_vae"
