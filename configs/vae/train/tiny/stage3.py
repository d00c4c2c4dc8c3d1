# Tiny stage 3: the ../stage3.py recipe on the tiny model of ./stage1.py.
_base_ = ["./stage1.py"]

dataset = dict(num_frames=33)
model = dict(freeze_spatial=False)
mixed_strategy = "mixed_video_random"
use_real_rec_loss = True
use_z_rec_loss = False
use_image_identity_loss = False
outputs = "outputs/tiny_stage3"
