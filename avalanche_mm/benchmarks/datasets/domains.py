"""Domain-incremental benchmarks of S-liPrompts: CORe50, DomainNet, CDDB-Hard, and a demo world.

- ``core50-domains``: CORe50 read through Avalanche's own loader
  (:class:`avalanche.benchmarks.datasets.CORe50Dataset`, which downloads and
  checks the archive with ``download=True``), 50 objects, one experience per
  training session (s1, s2, s4, s5, s6, s8, s9, s11, the "NI" protocol of
  S-Prompts and L2P); the test set is the three held-out sessions (s3, s7,
  s10), the same for every experience (unseen domains: the final row's mean is
  the published "average accuracy"). Avalanche's loader reads the
  metadata pickles (``paths.pkl``, ``labels.pkl``, ``LUP.pkl``) with ``pickle``:
  use only files Avalanche downloaded itself (``download=True``) or the
  official archive.
- ``domainnet-domains``: DomainNet, 345 classes, six domains in the order of
  S-Prompts (clipart, infograph, painting, quickdraw, real, sketch), from the
  official image folders and split files.
- ``cddb-hard``: CDDB-Hard deepfake detection (real / fake), the five tasks of
  S-Prompts (gaugan, biggan, wild, whichfaceisreal, san), from the official
  folders.
- ``demo-domains``: the procedural world's domain-incremental stream (rendering
  style and vocabulary shift per domain) with a paired reference split (other
  objects, every domain) for pretraining the demo CLIP.

The real loaders check their files first and raise
:class:`~avalanche_mm.benchmarks.datasets.DatasetNotFoundError` naming what is
missing, the expected layout and how to get the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from avalanche_mm.data import make_multimodal_dataset

from ..registry import register_benchmark
from ..scenarios import MultimodalScenario, domain_incremental_scenario
from ._common import DatasetFormatError, ImageFile, IndexedImage, as_root, not_found, require

# ---------------------------------------------------------------------------
# CORe50 (through Avalanche)
# ---------------------------------------------------------------------------
#: training sessions (domains) and held-out test sessions of the NI protocol
CORE50_TRAIN_SESSIONS = (1, 2, 4, 5, 6, 8, 9, 11)
CORE50_TEST_SESSIONS = (3, 7, 10)
#: the 50 objects, 5 per category (S-Prompts' class names, ``utils/class_names.py``)
CORE50_CLASS_NAMES = tuple(
    f"{kind} {i}" for kind in (
        "plug adapter", "mobile phone", "scissors", "light bulb", "can", "glasses", "ball", "marker",
        "cup", "remote control") for i in range(1, 6)
)
CORE50_LAYOUT = """\
    <root>/core50_128x128/s1/o1/C_01_01_000.png ...   (the "cropped_128x128_images" archive)
    <root>/batches_filelists/, <root>/paths.pkl, <root>/LUP.pkl, <root>/labels.pkl, <root>/labels2names.pkl
"""
_CORE50_HOW = (
    "pass download=True (Avalanche's CORe50Dataset downloads core50_128x128.zip and the "
    "paths/LUP/labels files from vlomonaco.github.io/core50 and checks them), or unpack them into root."
)


def _core50_session(path: str) -> int:
    """Session number of a CORe50 image path (``s11/o3/C_11_03_000.png`` -> 11)."""
    for part in Path(path).parts:
        if part.startswith("s") and part[1:].isdigit():
            return int(part[1:])
    raise DatasetFormatError(f"CORe50: cannot read the session of image path {path!r}.")


@register_benchmark("core50-domains")
def core50_domains(
    *,
    root,
    download: bool = False,
    image_size: int = 224,
    image_transform: Optional[Callable] = None,
    validation_size: float = 0.0,
) -> MultimodalScenario:
    """CORe50 domain-incremental (8 sessions, 50 objects), via Avalanche's CORe50 loader.

    :param root: Avalanche's CORe50 dataset root.
    :param download: let Avalanche download and check the data.
    :param image_size: side of the resized, centre-cropped images.
    :param image_transform: PIL -> tensor transform replacing the default.
    :param validation_size: fraction of each class in a ``valid`` stream.
    """
    from avalanche.benchmarks.datasets import CORe50Dataset

    root = as_root(root, "CORe50") if not download else Path(root).expanduser()
    if not download:
        require(root, ["core50_128x128", "batches_filelists", "paths.pkl", "labels.pkl", "LUP.pkl",
                       "labels2names.pkl"], dataset="CORe50",
                layout=CORE50_LAYOUT, how_to_get=_CORE50_HOW)
    data = {}
    for train in (True, False):
        ds = CORe50Dataset(root=str(root), train=train, download=download, mini=False, object_level=True)
        data[train] = ds
    img = ImageFile(size=image_size, transform=image_transform)

    def subset(ds, sessions):
        idx = [i for i, p in enumerate(ds.paths) if _core50_session(p) in sessions]
        if not idx:
            raise DatasetFormatError(f"CORe50: no image of sessions {sorted(sessions)} under {root}.")
        targets = [int(ds.targets[i]) for i in idx]
        loader = _Reindexed(IndexedImage(ds, img), idx)
        from avalanche_mm.data import LazyModality

        return make_multimodal_dataset({"image": LazyModality(range(len(idx)), loader)}, targets)

    trains = [subset(data[True], {s}) for s in CORE50_TRAIN_SESSIONS]
    test = subset(data[False], set(CORE50_TEST_SESSIONS))
    return domain_incremental_scenario(
        trains, [test] * len(trains),
        domain_names=[f"s{s}" for s in CORE50_TRAIN_SESSIONS],
        class_names=list(CORE50_CLASS_NAMES),
        validation_size=validation_size,
        info={"protocol": "CORe50 NI (S-Prompts): train sessions 1,2,4,5,6,8,9,11; test sessions 3,7,10",
              "test": "the held-out sessions, the same for every experience"},
    )


class _Reindexed:
    """Picklable loader: local index -> ``loader(indices[i])``."""

    def __init__(self, loader, indices):
        self.loader, self.indices = loader, list(indices)

    def __call__(self, i):
        return self.loader(self.indices[int(i)])


# ---------------------------------------------------------------------------
# image-folder domains (DomainNet, CDDB)
# ---------------------------------------------------------------------------
def _image_dataset(paths: Sequence[Path], targets: Sequence[int], img: ImageFile):
    from avalanche_mm.data import LazyModality

    return make_multimodal_dataset({"image": LazyModality([str(p) for p in paths], img)}, list(targets))


DOMAINNET_DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
DOMAINNET_LAYOUT = """\
    <root>/<domain>/<class>/<image>.jpg          for domain in clipart infograph painting quickdraw real sketch
    <root>/<domain>_train.txt, <root>/<domain>_test.txt   (lines "<domain>/<class>/<image>.jpg <label>")
"""
_DOMAINNET_HOW = (
    "download the six domain zips and the train/test split files from "
    "http://ai.bu.edu/M3SDA/ (DomainNet, cleaned version) and unpack them into root."
)


def _read_split(root: Path, name: str, dataset: str) -> List[Tuple[str, int]]:
    out = []
    with open(root / name, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise DatasetFormatError(f"{dataset}: {root / name} line {n} is {line!r}, expected '<path> <label>'.")
            out.append((parts[0], int(parts[1])))
    return out


@register_benchmark("domainnet-domains")
def domainnet_domains(
    *,
    root,
    domains: Sequence[str] = DOMAINNET_DOMAINS,
    image_size: int = 224,
    image_transform: Optional[Callable] = None,
    validation_size: float = 0.0,
) -> MultimodalScenario:
    """DomainNet domain-incremental (345 classes, one experience per domain).

    :param root: folder holding the domain folders and ``<domain>_{train,test}.txt``.
    :param domains: the domains, in order (S-Prompts: clipart, infograph, painting, quickdraw, real, sketch).
    :param image_size: side of the resized, centre-cropped images.
    :param image_transform: PIL -> tensor transform replacing the default.
    :param validation_size: fraction of each class in a ``valid`` stream.
    """
    root = as_root(root, "DomainNet")
    bad = [d for d in domains if d not in DOMAINNET_DOMAINS]
    if bad:
        raise ValueError(f"domainnet-domains: unknown domains {bad}; choose among {list(DOMAINNET_DOMAINS)}.")
    required = [d for d in domains] + [f"{d}_{s}.txt" for d in domains for s in ("train", "test")]
    require(root, required, dataset="DomainNet", layout=DOMAINNET_LAYOUT, how_to_get=_DOMAINNET_HOW)
    img = ImageFile(size=image_size, transform=image_transform)
    names: Dict[int, str] = {}
    trains, tests = [], []
    for d in domains:
        for split, bucket in (("train", trains), ("test", tests)):
            rows = _read_split(root, f"{d}_{split}.txt", "DomainNet")
            for path, label in rows:
                names.setdefault(label, Path(path).parts[-2].replace("_", " "))
            bucket.append(_image_dataset([root / p for p, _ in rows], [lab for _, lab in rows], img))
    if sorted(names) != list(range(len(names))):
        raise DatasetFormatError(f"DomainNet: labels in the split files are not 0..{len(names) - 1}.")
    return domain_incremental_scenario(
        trains, tests, domain_names=list(domains), class_names=[names[i] for i in range(len(names))],
        validation_size=validation_size, info={"protocol": "DomainNet, S-Prompts domain order"},
    )


CDDB_HARD_TASKS = ("gaugan", "biggan", "wild", "whichfaceisreal", "san")
CDDB_LAYOUT = """\
    <root>/<task>/train/[<subset>/]0_real/*.png   and  .../1_fake/*.png
    <root>/<task>/val/[<subset>/]0_real/*.png     and  .../1_fake/*.png      (the test split of S-Prompts)
    for task in gaugan biggan wild whichfaceisreal san   (CDDB-Hard)
"""
_CDDB_HOW = "download CDDB from https://github.com/Coral79/CDDB (the CDDB.tar archive) and unpack it into root."


def _real_fake_images(folder: Path) -> Tuple[List[Path], List[int]]:
    paths, targets = [], []
    for label, sub in ((0, "0_real"), (1, "1_fake")):
        for p in sorted(folder.rglob(f"{sub}/*")):
            if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"):
                paths.append(p)
                targets.append(label)
    return paths, targets


@register_benchmark("cddb-hard")
def cddb_hard(
    *,
    root,
    tasks: Sequence[str] = CDDB_HARD_TASKS,
    image_size: int = 224,
    image_transform: Optional[Callable] = None,
    validation_size: float = 0.0,
) -> MultimodalScenario:
    """CDDB-Hard deepfake detection, domain-incremental (real / fake, five generators).

    :param root: folder holding one folder per task.
    :param tasks: the tasks, in order (CDDB-Hard: gaugan, biggan, wild, whichfaceisreal, san).
    :param image_size: side of the resized, centre-cropped images.
    :param image_transform: PIL -> tensor transform replacing the default.
    :param validation_size: fraction of each class in a ``valid`` stream.
    """
    root = as_root(root, "CDDB")
    require(root, [f"{t}/{s}" for t in tasks for s in ("train", "val")], dataset="CDDB", layout=CDDB_LAYOUT,
            how_to_get=_CDDB_HOW)
    img = ImageFile(size=image_size, transform=image_transform)
    trains, tests = [], []
    for t in tasks:
        for split, bucket in (("train", trains), ("val", tests)):
            paths, targets = _real_fake_images(root / t / split)
            if not paths:
                raise not_found(
                    "CDDB", root, [f"{t}/{split}/**/0_real/*.png", f"{t}/{split}/**/1_fake/*.png"],
                    layout=CDDB_LAYOUT, how_to_get=_CDDB_HOW,
                )
            bucket.append(_image_dataset(paths, targets, img))
    return domain_incremental_scenario(
        trains, tests, domain_names=list(tasks), class_names=["real", "fake"],
        validation_size=validation_size, info={"protocol": "CDDB-Hard (S-Prompts)"},
    )


# ---------------------------------------------------------------------------
# the demo world
# ---------------------------------------------------------------------------
@register_benchmark("demo-domains")
def demo_domains(
    *,
    world: Optional[Mapping[str, Any]] = None,
    num_classes: int = 6,
    num_domains: int = 4,
    train_per_class: int = 24,
    test_per_class: int = 12,
    reference_per_combination: int = 6,
    seed: int = 0,
):
    """Procedural world, domain-incremental, with a paired reference split for pretraining.

    :param world: keyword arguments of :class:`~avalanche_mm.benchmarks.world.ProceduralWorld`
        (``num_domains`` is set from ``num_domains``).
    :param num_classes: classes (objects), the same in every domain.
    :param num_domains: domains (rendering styles + vocabulary).
    :param train_per_class: training images per class and domain.
    :param test_per_class: test images per class and domain.
    :param reference_per_combination: reference pairs per reference object (spread over the domains).
    :param seed: seed of the class choice.
    """
    from ..world import ProceduralWorld

    from ..bundle import BenchmarkBundle, ReferenceSet

    wp = dict(world or {})
    wp["num_domains"] = int(num_domains)
    w = ProceduralWorld(**wp)
    scenario = w.domain_incremental_benchmark(
        num_classes=num_classes, train_per_class=train_per_class, test_per_class=test_per_class,
        modalities=("image",), seed=seed,
    )
    ref = w.reference_samples(per_combination=reference_per_combination, domains=tuple(range(num_domains)),
                              modalities=("image", "text"))
    reference = ReferenceSet(
        images=ref.modalities["image"].float(), texts=list(ref.captions),
        fingerprint={"world": wp, "per_combination": reference_per_combination, "domains": int(num_domains)},
    )
    return BenchmarkBundle(
        name="demo-domains", scenario=scenario, class_names=list(scenario.class_names), reference=reference,
        modalities=("image",),
        description=f"procedural world, {num_domains} domains x {num_classes} classes (domain-incremental), "
                    "with a reference split of other objects in every domain for pretraining",
    )


__all__ = [
    "CORE50_TRAIN_SESSIONS",
    "CORE50_TEST_SESSIONS",
    "CORE50_CLASS_NAMES",
    "CORE50_LAYOUT",
    "DOMAINNET_DOMAINS",
    "DOMAINNET_LAYOUT",
    "CDDB_HARD_TASKS",
    "CDDB_LAYOUT",
    "core50_domains",
    "domainnet_domains",
    "cddb_hard",
    "demo_domains",
]
