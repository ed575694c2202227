"""The packed store: an FFCV-.beton-compatible file written by ``write_dataset`` and read,
memory-mapped, by ``Store``. The file format is described in ``format.py``."""

from .fields import (BytesField, Field, FloatField, IntField, JSONField, NDArrayField, RGBImageField,
                     TorchTensorField)
from .reader import Store
from .writer import write_dataset

__all__ = ["Store", "write_dataset", "Field", "RGBImageField", "IntField", "FloatField",
           "NDArrayField", "BytesField", "JSONField", "TorchTensorField"]
