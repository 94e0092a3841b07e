"""detlite: EfficientDet for PyTorch as flat functions over a dict of tensors."""

__version__ = "0.1.0"
