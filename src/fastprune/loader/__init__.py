"""The fast loader: native gather/decode, numba batch transforms, honest epoch lengths."""

from .loader import Batch, Loader
from .transforms import (BatchTransform, CenterCrop, Cutout, Normalize, RandomCrop, RandomHorizontalFlip,
                         RandomResizedCrop)

__all__ = ["Batch", "BatchTransform", "CenterCrop", "Cutout", "Loader", "Normalize", "RandomCrop",
           "RandomHorizontalFlip", "RandomResizedCrop"]
