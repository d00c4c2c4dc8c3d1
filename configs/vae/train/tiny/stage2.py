# Tiny stage 2: the ../stage2.py recipe on the tiny model of ./stage1.py.
_base_ = ["./stage1.py"]

model = dict(freeze_spatial=False)
use_image_identity_loss = False
outputs = "outputs/tiny_stage2"
