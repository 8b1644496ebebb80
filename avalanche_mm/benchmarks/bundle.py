"""A benchmark as a run sees it: the scenario plus what it carries beside it.

:class:`BenchmarkBundle` holds the Avalanche scenario, class names, modalities
and an optional :class:`ReferenceSet`, a *reference split* of images and
sentences outside the task splits (used to pretrain a small backbone, as
ZSCL's reference data and as the alignment probe set). Benchmarks that carry
one (the demo worlds) return a bundle from their factory; real-data studies
name theirs in the config (``benchmark.reference``, :func:`load_reference`).

:func:`build_bundle` builds a registered benchmark from a config's
``benchmark`` section.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from torch import Tensor


@dataclass
class ReferenceSet:
    """Reference data outside the task splits (pretraining, ZSCL, probe set).

    :ivar images: ``[N, 3, H, W]`` images already in the model's input format,
        or a dataset of ``({"image": ...}, y, t)`` samples (real data, loaded lazily).
    :ivar texts: sentences (raw strings).
    :ivar paired: True when ``texts[i]`` describes ``images[i]`` (captions).
    :ivar fingerprint: what identifies the data (for the pretraining cache).
    """

    images: Any
    texts: List[str]
    paired: bool = True
    fingerprint: Dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0]) if isinstance(self.images, Tensor) else len(self.images)


@dataclass
class BenchmarkBundle:
    """A benchmark and its metadata.

    :ivar name: the benchmark name.
    :ivar scenario: the Avalanche ``CLScenario`` (``train_stream``, ``test_stream``).
    :ivar class_names: names by global class id (None when unknown).
    :ivar reference: an optional :class:`ReferenceSet`.
    :ivar modalities: modality names of the samples.
    :ivar description: one line for the report.
    """

    name: str
    scenario: Any
    class_names: Optional[List[str]] = None
    reference: Optional[ReferenceSet] = None
    modalities: Sequence[str] = ()
    description: str = ""

    @property
    def n_experiences(self) -> int:
        return len(self.scenario.train_stream)

    @property
    def shared_test_sets(self) -> bool:
        """True when the test experiences are fixed test sets evaluated after every training
        experience (``scenario.info["test_protocol"] == "shared"``, e.g. Mod-X's Flickr30K and
        COCO test splits): the matrix is then ``[training experiences, test sets]``; False when
        test experience ``i`` belongs to training experience ``i`` (the accuracy matrix)."""
        info = getattr(self.scenario, "info", None) or {}
        return isinstance(info, Mapping) and info.get("test_protocol") == "shared"

    def phase_names(self) -> List[str]:
        """A short name per training experience (``phase0``... for shared test sets, else the
        test experiences' names, which then name the training experiences too)."""
        if self.shared_test_sets:
            return [f"phase{i}" for i in range(self.n_experiences)]
        return self.experience_names()

    def experience_names(self) -> List[str]:
        """A short name per test experience (dataset name when known)."""
        out = []
        for i, exp in enumerate(self.scenario.test_stream):
            out.append(str(getattr(exp, "dataset_name", None) or f"exp{i}"))
        if len(set(out)) != len(out):  # e.g. class-incremental splits of one dataset
            out = [f"exp{i}" for i in range(len(out))]
        return out


def resolve_data_path(path: str, data_root: Optional[str]) -> str:
    """``path`` with ``~`` expanded, relative paths taken under ``data_root`` when given."""
    path = os.path.expanduser(path)
    if not os.path.isabs(path) and data_root:
        path = os.path.join(os.path.expanduser(data_root), path)
    return path


def reference_problems(cfg: Mapping[str, Any], data_root: Optional[str], key: str) -> List[str]:
    """Problems with a ``benchmark.reference`` section found without reading it
    (missing half, absent files); messages name ``{key}.images`` / ``{key}.texts``."""
    if not cfg or (cfg.get("images") is None and cfg.get("texts") is None):
        return []
    out = []
    for what in ("images", "texts"):
        value = cfg.get(what)
        if value is None:
            out.append(f"{key}.{what}: missing, give both images (a folder) and texts (a file of sentences)")
            continue
        path = resolve_data_path(value, data_root)
        ok = os.path.isdir(path) if what == "images" else os.path.isfile(path)
        if not ok:
            out.append(
                f"{key}.{what}: got {value!r} ({path}), expected an existing "
                + ("folder of images" if what == "images" else "file of sentences")
            )
    return out


def load_reference(
    cfg: Mapping[str, Any],
    *,
    data_root: Optional[str] = None,
    image_transform: Optional[Callable] = None,
    image_size: int = 224,
    seed: int = 0,
) -> Optional[ReferenceSet]:
    """The reference data of a ``benchmark.reference`` section (None when it names none).

    Images are read lazily from an ImageFolder-style tree (every image file under
    ``images``, sorted), resized/cropped by the benchmarks' ``ImageFile`` with
    ``image_transform`` (e.g. the backbone's ``preprocess_eval``); sentences
    are the non-empty lines of ``texts`` (the first column of a ``.tsv``, as
    Conceptual Captions ships). ``max_images``/``max_texts`` keep a
    seeded random sample.
    """
    if not cfg or (cfg.get("images") is None and cfg.get("texts") is None):
        return None
    import numpy as np

    from avalanche_mm.data import LazyModality, make_multimodal_dataset

    if cfg.get("images") is None or cfg.get("texts") is None:
        raise ValueError("benchmark.reference: give both images (a folder) and texts (a file of sentences).")
    root = resolve_data_path(cfg["images"], data_root)
    exts = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG", ".JPG", ".PNG")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(exts))
    if not files:
        raise FileNotFoundError(f"benchmark.reference.images: no image files under {root!r}.")
    text_path = resolve_data_path(cfg["texts"], data_root)
    with open(text_path, encoding="utf-8") as fh:
        lines = [line.rstrip("\n") for line in fh]
    if text_path.endswith(".tsv"):  # Conceptual Captions: caption<TAB>url
        texts = [line.split("\t")[0].strip() for line in lines if line.strip()]
    else:
        texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise ValueError(f"benchmark.reference.texts: {cfg['texts']!r} has no sentences.")
    rng = np.random.default_rng(seed)
    if cfg.get("max_images") and len(files) > cfg["max_images"]:
        files = [files[i] for i in sorted(rng.choice(len(files), cfg["max_images"], replace=False))]
    if cfg.get("max_texts") and len(texts) > cfg["max_texts"]:
        texts = [texts[i] for i in sorted(rng.choice(len(texts), cfg["max_texts"], replace=False))]
    from avalanche_mm.benchmarks.datasets._common import ImageFile

    images = make_multimodal_dataset(
        {"image": LazyModality(files, ImageFile(size=image_size, transform=image_transform))}, [0] * len(files)
    )
    return ReferenceSet(images=images, texts=texts, paired=False, fingerprint=dict(cfg))


def build_bundle(cfg: Mapping[str, Any], *, seed: int, inject: Optional[Mapping[str, Any]] = None) -> BenchmarkBundle:
    """Build the benchmark of a config's ``benchmark`` section.

    :param cfg: the section: ``name``, ``params``, ``data_root``, ``reference``.
    :param seed: the run's seed (given to benchmarks that take one and were not given one).
    :param inject: parameters passed when the benchmark accepts them and the
        config does not set them (e.g. the backbone's ``image_transform``).
    """
    from .registry import benchmark_info

    name = cfg["name"]
    entry = benchmark_info(name)
    params = dict(cfg.get("params") or {})
    if cfg.get("data_root") is not None:
        params.setdefault("root", os.path.expanduser(cfg["data_root"]))
    accepted = set(entry.parameters)
    for k, v in (inject or {}).items():
        if k in accepted and k not in params:
            params[k] = v
    if "seed" in accepted and not entry.needs_data:
        params.setdefault("seed", seed)
    params = {k: v for k, v in params.items() if k in accepted}
    scenario = entry.factory(**params)
    if isinstance(scenario, BenchmarkBundle):
        return scenario
    reference = load_reference(
        cfg.get("reference") or {},
        data_root=cfg.get("data_root"),
        image_transform=(inject or {}).get("image_transform"),
        image_size=int((inject or {}).get("image_size", 224)),
        seed=seed,
    )
    return BenchmarkBundle(
        name=name,
        scenario=scenario,
        class_names=getattr(scenario, "class_names", None),
        reference=reference,
        modalities=tuple(getattr(scenario, "modalities", ()) or ()),
        description=str(getattr(scenario, "info", {}).get("description", "")) if hasattr(scenario, "info") else "",
    )


__all__ = ["ReferenceSet", "BenchmarkBundle", "build_bundle", "load_reference", "reference_problems", "resolve_data_path"]
