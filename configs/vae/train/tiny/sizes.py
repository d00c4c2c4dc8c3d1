# The tiny sizes of every tiny stage (CPU tests and the quickstart demo): not a config of its own.
# Each ./stageN.py is ../stageN.py (the recipe) with these values applied on top, as if written there.
dataset = dict(image_size=(64, 64))
model = dict(
    spatial=dict(
        from_pretrained=None,
        config=dict(
            _delete_=True,  # the base value is None: replace, do not merge
            _class_name="AutoencoderKL",
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
            block_out_channels=[16, 32, 32, 32],
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=64,
        ),
    ),
    temporal=dict(filters=16, num_res_blocks=1, num_groups=8),
)
num_workers = 0
dtype = "fp32"
grad_checkpoint = False
ckpt_every = 50
preview_every = 25  # TensorBoard input|reconstruction image: one tiny decode, so often
