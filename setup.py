from setuptools import find_packages, setup

setup(
    name="swcm",
    version="0.1.0",
    description="XLM-SWCM shared-weight encoder-decoder pretraining for extremely low-resource languages",
    # The Triton kernels live in the top-level folder kernels/ but install under an import name of our own:
    # `kernels` is Hugging Face's package (a dependency of transformers >= 5.25), and the folder has no
    # __init__.py, so at the repository root it cannot shadow theirs either.
    packages=find_packages(include=["swcm", "swcm.*"]) + ["swcm_kernels"],
    package_dir={"swcm_kernels": "kernels"},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "transformers>=5.23,<6",   # 5.23.0 (make test-transformers-floor) to 5.25.0 (constraints.txt)
        "deepspeed>=0.16",
        "webdataset>=0.2.86",
        "datatrove>=0.10.1,<0.11",   # prepare_data.py's pipeline (swcm/data/prepare_*.py)
        "pyarrow>=26",   # Parquet inputs
        "zstandard>=0.25",   # .zst inputs
        "sentencepiece>=0.2",
        "protobuf>=4",   # sentencepiece's ModelProto, to rewrite a trimmed vocabulary
        "safetensors>=0.4",
        "tensorboard>=2.14",
        "numpy>=1.24",
        "tqdm>=4.60",
        "sacrebleu>=2.3",
        "accelerate>=1.1",
        "psutil>=5.9",   # swcm-launch (swcm/launcher.py)
        "matplotlib>=3.5",   # launch/ablate.py's plot
    ],
    entry_points={"console_scripts": ["swcm-launch=swcm.launcher:main"]},
    extras_require={
        "triton": ["triton>=3.0"],
        "datasets": ["datasets>=5.2"],   # saved `datasets` directories as prepare_data inputs
        "ray": ["ray[default]"],   # prepare_data.py --executor ray
        "dev": ["pytest>=8", "pytest-timeout>=2", "pytest-xdist>=3.5", "triton>=3.0", "py-spy>=0.3", "datasets>=5.2"],   # py-spy: bench_peer --profile
    },
)
