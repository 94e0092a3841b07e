"""detlite: EfficientDet for PyTorch as flat functions over a dict of tensors."""

__version__ = "0.1.0"

__all__ = ["Detector", "__version__"]


def __getattr__(name: str):
    # `detlite.Detector` without importing torch and the model at `import detlite`.
    if name == "Detector":
        from .detector import Detector

        return Detector
    raise AttributeError(f"module 'detlite' has no attribute {name!r}")
