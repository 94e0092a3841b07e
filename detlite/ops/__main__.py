"""`python -m detlite.ops`: which kernels serve the detlite ops on this install."""

import torch

from detlite import ops

print(ops.status())
print(f"CUDA kernels registered: {ops.cuda_kernels_loaded()}")
print(
    f"torch {torch.__version__}, CUDA build: {torch.version.cuda}, GPU: {torch.cuda.is_available()}"
)
