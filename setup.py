from setuptools import find_packages, setup

setup(
    name="opensora-vae",
    version="0.1.0",
    description="Training, inference and evaluation of the Open-Sora 1.2 video VAE",
    packages=find_packages(include=["opensora_vae", "opensora_vae.*"]),
    package_data={"opensora_vae": ["models/configs/*.json"]},
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
