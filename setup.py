from setuptools import find_packages, setup

setup(
    name="opensora-vae",
    version="0.1.0",
    description="Training, inference and evaluation of the Open-Sora 1.2 video VAE",
    # configs/vae (the config schema in _base_/, the stage and inference configs) is installed as
    # opensora_vae/configs, where opensora_vae.config finds it without a checkout.
    packages=find_packages(include=["opensora_vae", "opensora_vae.*"]) + ["opensora_vae.configs"],
    package_dir={"opensora_vae.configs": "configs/vae"},
    package_data={"opensora_vae": ["models/configs/*.json"],
                  "opensora_vae.configs": ["_base_/*.py", "train/*.py", "train/*/*.py", "inference/*.py",
                                            "encode/*.py"]},
    python_requires=">=3.10",
    install_requires=[
        "torch",
        "torchvision",
        "diffusers",
        "huggingface-hub",
        "mmengine-lite",
        "av",
        "numpy",
        "pandas",
        "pyarrow",
        "pillow",
        "lpips",
        "scipy",
        "threadpoolctl",
        "tqdm",
        "safetensors",
        "tensorboard",
        "matplotlib",
    ],
)
