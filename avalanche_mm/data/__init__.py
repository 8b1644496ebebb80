"""The multimodal sample: batches, collate, dataset builders and transforms.

A sample is Avalanche's ``(x, y, t)`` with ``x`` a dict modality -> tensor
(None marks a missing modality); a collated ``x`` is a
:class:`MultimodalBatch` with presence masks and lengths.
"""

from .batch import MultimodalBatch, batch_size, cat_batches, index_batch, to_device
from .collate import ModalitySpec, MultimodalCollate, as_tensor, infer_specs
from .dataset import (
    LazyModality,
    MultimodalTensorDataset,
    get_modality_specs,
    make_multimodal_dataset,
    make_pair_dataset,
)
from .text import WordTokenizer
from .transforms import ModalityTransform, make_transform_groups

__all__ = [
    "MultimodalBatch",
    "to_device",
    "batch_size",
    "index_batch",
    "cat_batches",
    "ModalitySpec",
    "MultimodalCollate",
    "infer_specs",
    "as_tensor",
    "LazyModality",
    "MultimodalTensorDataset",
    "make_multimodal_dataset",
    "make_pair_dataset",
    "get_modality_specs",
    "WordTokenizer",
    "ModalityTransform",
    "make_transform_groups",
]
