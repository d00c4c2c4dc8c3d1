# Reconstruct single images (1-frame clips) with the pipeline: ./video.py with 1-frame clips.
_base_ = ["./video.py"]

dataset = dict(num_frames=1, image_size=(256, 256))
save_dir = "samples/vae_image"
