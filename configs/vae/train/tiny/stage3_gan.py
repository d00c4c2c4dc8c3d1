# Tiny stage 3 with the adversarial phase: exactly the ../stage3_gan.py recipe, with the tiny sizes
# of ./sizes.py and a small discriminator (3 blocks: windows need more than 4 frames and an image
# size divisible by 8). tests/training/test_adversarial.py checks that nothing else differs.
_base_ = ["../stage3_gan.py"]

# mmengine's Python configs run as code: ./sizes.py's assignments apply here, over the base.
with open("{{ fileDirname }}/sizes.py", encoding="utf-8") as __sizes:
    exec(__sizes.read())
discriminator = dict(filters=32, channel_multipliers=(1, 1, 1))  # merged: num_groups stays 32
outputs = "outputs/tiny_stage3_gan"
