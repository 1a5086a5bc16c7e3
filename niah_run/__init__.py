"""niah: exact, resumable needle-in-a-haystack sweeps on local (quantized) models."""

from doctor import __version__

__all__ = ["__version__"]
