# Tiny stage 3 with the adversarial phase: the ../stage3_gan.py settings (the schema's adversarial
# defaults) on the tiny model of ./stage3.py, with a small discriminator (3 blocks: windows need
# more than 4 frames and an image size divisible by 8).
# tests/training/test_adversarial.py checks that it differs from ../stage3_gan.py only in sizes.
_base_ = ["./stage3.py"]

discriminator = dict(_delete_=True, filters=32, channel_multipliers=(1, 1, 1), num_groups=32)
outputs = "outputs/tiny_stage3_gan"
