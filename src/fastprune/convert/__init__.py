"""Converters: turn a dataset source into a store (``image`` + ``label`` fields).

Each ``from_*`` function checks its input, builds a sample source and field schema, and calls
:func:`fastprune.write_dataset`, which writes the file atomically. Bad input raises
:class:`fastprune.ConversionError` naming the file or sample at fault, and leaves no output file.
Every function returns the output path.
"""

from .arrays import from_arrays, from_npz
from .cifar import RestrictedUnpickler, from_cifar
from .detect import KINDS, convert, detect_kind
from .hf_files import from_hf_path
from .idx import FASHION_MNIST_DIR, from_idx, read_idx
from .image_folder import from_image_folder
from .store_copy import from_store
from .torch_dataset import from_hf_dataset, from_torch_dataset

__all__ = [
    "FASHION_MNIST_DIR", "KINDS", "RestrictedUnpickler", "convert", "detect_kind", "from_arrays",
    "from_cifar", "from_hf_dataset", "from_hf_path", "from_idx", "from_image_folder", "from_npz", "from_store",
    "from_torch_dataset", "read_idx",
]
