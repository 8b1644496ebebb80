"""Loaders for real multimodal datasets on disk.

Every loader checks its files first and raises
:class:`DatasetNotFoundError` listing what is missing, the expected layout
and how to get the data; malformed content raises :class:`DatasetFormatError`.
Importing this package registers the real-data benchmarks (``mtil``,
``cifar100-clip``, ``coco-retrieval``, ``flickr30k-retrieval``,
``avcil-*``, ``seq-/dom-/gcil-vggsound``, ``uestc-mmea-cl``).
"""

from ._common import (
    DatasetFormatError,
    DatasetNotFoundError,
    ImageFile,
    legacy_class_order,
    md5sum,
    verify_checksums,
)
from .audio_visual import (
    AVCIL_PROTOCOLS,
    avcil_ave,
    avcil_kinetics_sounds,
    avcil_vggsound100,
    dom_vggsound,
    gcil_vggsound,
    load_avcil_features,
    load_vggsound_clips,
    read_wav,
    seq_vggsound,
)
from .cifar import CIFAR100_TEMPLATES, cifar100_class_incremental, cifar100_datasets, read_cifar100
from .domains import cddb_hard, core50_domains, demo_domains, domainnet_domains
from .mtil import MTIL_DATASETS, MTIL_LAYOUTS, MTIL_TEMPLATES, load_mtil_dataset, mtil_benchmark
from .retrieval import coco_retrieval, flickr30k_retrieval, load_karpathy_pairs, read_karpathy_json
from .p9d import P9D_ORDER, p9d, p9d_pairs  # issue 14 (CTP)
from .uestc import load_uestc_mmea, uestc_mmea_cl

__all__ = [
    "DatasetNotFoundError",
    "DatasetFormatError",
    "ImageFile",
    "legacy_class_order",
    "md5sum",
    "verify_checksums",
    "MTIL_DATASETS",
    "MTIL_LAYOUTS",
    "MTIL_TEMPLATES",
    "load_mtil_dataset",
    "mtil_benchmark",
    "CIFAR100_TEMPLATES",
    "read_cifar100",
    "cifar100_datasets",
    "cifar100_class_incremental",
    "core50_domains",
    "domainnet_domains",
    "cddb_hard",
    "demo_domains",
    "read_karpathy_json",
    "load_karpathy_pairs",
    "coco_retrieval",
    "flickr30k_retrieval",
    "AVCIL_PROTOCOLS",
    "load_avcil_features",
    "avcil_ave",
    "avcil_kinetics_sounds",
    "avcil_vggsound100",
    "read_wav",
    "load_vggsound_clips",
    "seq_vggsound",
    "dom_vggsound",
    "gcil_vggsound",
    "load_uestc_mmea",
    "uestc_mmea_cl",
]
