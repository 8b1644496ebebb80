"""Audio-visual benchmarks: AV-CIL pre-extracted features and SAMM's VGGSound.

**AV-CIL** (Pian et al., ICCV 2023) layout, one folder per dataset::

    <root>/<AVE | kinetics-sounds | VGGSound_100>/
        all_id_category_dict.npy     {"train"|"val"|"test": {video_id: category}}
        category_encode_dict.npy     {category: class_id}
        audio_pretrained_feature/audio_pretrained_feature_dict.npy   {video_id: array}
        visual_pretrained_feature/visual_pretrained_feature_dict.npy {video_id: array}
            (or visual_features.h5, one dataset per video id; needs h5py)

Samples are ``{"audio": FloatTensor[...], "video": FloatTensor[...]}`` with
the stored feature shapes (AudioMAE / VideoMAE tokens); every video id must
have both features, and all features of a modality must share one shape.
Protocols: AVE 28 classes in 4 steps (memory 340), Kinetics-Sounds 30 in 5
(memory 500), VGGSound100 100 in 10 (memory 1500); class order = class id
order; the official ``val`` split feeds the ``valid`` stream.

**SAMM** (Sarfraz et al., CoLLAs 2024) VGGSound layout::

    <root>/<csv>          rows: youtube_id, start_seconds, label, split (train/test/...)
    <root>/audio/<youtube_id>_<start:06d>.wav
    <root>/images/Image-01-FPS/<youtube_id>_<start:06d>.mp4/<frame>.jpg

Samples are ``{"audio": log-spectrogram [129, T], "video": [3, F, S, S]}``:
the first ``clip_seconds`` of the 16 kHz mono waveform (tiled when shorter),
``STFT(n_fft=256, hop=128)``, ``log(|X| + 1e-7)``; ``num_frames`` frames
sampled evenly. Seq-VGGSound: class-incremental, 10 x 10 classes in a seeded
order; Dom-VGGSound: targets are super-categories, each experience brings
new sub-classes; GCIL-VGGSound: :func:`~avalanche_mm.benchmarks.gcil_scenario`.
Neither source ships data we can download: place the files by hand.
"""

from __future__ import annotations

import csv
import pickle
import wave
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from avalanche_mm.data import LazyModality, make_multimodal_dataset

from ..registry import register_benchmark
from ..scenarios import (
    MultimodalScenario,
    class_incremental_scenario,
    domain_incremental_scenario,
    gcil_scenario,
)
from ._common import DatasetFormatError, ImageFile, as_root, not_found, require
from ._safety import load_npy

AVCIL_PROTOCOLS: Dict[str, Dict[str, int]] = {
    "AVE": {"num_classes": 28, "num_steps": 4, "memory_size": 340},
    "kinetics-sounds": {"num_classes": 30, "num_steps": 5, "memory_size": 500},
    "VGGSound_100": {"num_classes": 100, "num_steps": 10, "memory_size": 1500},
}
_AVCIL_LAYOUT = """\
    <root>/{name}/all_id_category_dict.npy
    <root>/{name}/category_encode_dict.npy
    <root>/{name}/audio_pretrained_feature/audio_pretrained_feature_dict.npy
    <root>/{name}/visual_pretrained_feature/visual_pretrained_feature_dict.npy
        (or visual_features.h5)
"""
_AVCIL_HOW = (
    "get the videos (AVE, Kinetics, VGGSound) and the video-id lists of the AV-CIL repository, "
    "then extract AudioMAE/VideoMAE features with its scripts into this layout."
)


def _load_npy_dict(path: Path, what: str) -> dict:
    try:
        # plain arrays: allow_pickle=False; pickled dicts: a data-only unpickler (no code runs)
        obj = load_npy(path)
        obj = obj.item() if isinstance(obj, np.ndarray) and obj.dtype == object else obj
    except (ValueError, OSError, EOFError, pickle.UnpicklingError, TypeError, AttributeError) as err:
        raise DatasetFormatError(f"{path}: cannot read {what} ({err}); the file is corrupt.") from err
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{path}: expected a pickled dict ({what}), got {type(obj).__name__}.")
    return obj


class _DictFeature:
    """Picklable loader: video id -> float tensor from an in-memory dict."""

    def __init__(self, table: dict):
        self.table = table

    def __call__(self, vid):
        return torch.as_tensor(np.asarray(self.table[vid]), dtype=torch.float32)


class _H5Feature:
    """Picklable loader: video id -> float tensor from an HDF5 file (opened lazily)."""

    def __init__(self, path: str):
        self.path = path
        self._file = None

    def __getstate__(self):
        return {"path": self.path, "_file": None}

    def __call__(self, vid):
        if self._file is None:
            import h5py

            self._file = h5py.File(self.path, "r")
        return torch.as_tensor(self._file[vid][()], dtype=torch.float32)


def _check_shapes(shapes: Dict[str, tuple], modality: str, dataset: str) -> None:
    distinct = {}
    for vid, shp in shapes.items():
        distinct.setdefault(tuple(shp), vid)
    if len(distinct) > 1:
        examples = ", ".join(f"{vid}: {list(s)}" for s, vid in list(distinct.items())[:4])
        raise DatasetFormatError(
            f"{dataset}: {modality} features have inconsistent shapes ({examples}); every "
            f"{modality} feature must have the same shape. Re-extract the odd ones."
        )


def load_avcil_features(name: str, *, root):
    """AV-CIL pre-extracted features of ``name`` as multimodal datasets.

    :param name: ``"AVE"``, ``"kinetics-sounds"`` or ``"VGGSound_100"``.
    :param root: folder holding ``<name>/``.
    :return: ``(train, val, test, class_names)``.
    """
    if name not in AVCIL_PROTOCOLS:
        raise KeyError(f"unknown AV-CIL dataset {name!r}; choose among {sorted(AVCIL_PROTOCOLS)}.")
    root = as_root(root, name)
    base = root / name
    layout = _AVCIL_LAYOUT.format(name=name)
    require(
        root,
        [f"{name}/all_id_category_dict.npy", f"{name}/category_encode_dict.npy",
         f"{name}/audio_pretrained_feature/audio_pretrained_feature_dict.npy"],
        dataset=name, layout=layout, how_to_get=_AVCIL_HOW,
    )
    vis_npy = base / "visual_pretrained_feature" / "visual_pretrained_feature_dict.npy"
    vis_h5 = base / "visual_pretrained_feature" / "visual_features.h5"
    if not vis_npy.exists() and not vis_h5.exists():
        raise not_found(name, root, [str(vis_npy.relative_to(root))], layout=layout,
                        how_to_get=_AVCIL_HOW)
    id_cat = _load_npy_dict(base / "all_id_category_dict.npy", "video id -> category per split")
    encode = _load_npy_dict(base / "category_encode_dict.npy", "category -> class id")
    audio = _load_npy_dict(
        base / "audio_pretrained_feature" / "audio_pretrained_feature_dict.npy", "audio features"
    )
    if vis_npy.exists():
        visual_table = _load_npy_dict(vis_npy, "visual features")
        visual_loader = _DictFeature(visual_table)
        visual_ids = set(visual_table)
        _check_shapes({v: np.shape(x) for v, x in visual_table.items()}, "video", name)
    else:
        try:
            import h5py
        except ImportError as err:
            raise ImportError(
                f"{name}: {vis_h5} is an HDF5 file and reading it needs h5py "
                "(pip install h5py), or convert it to visual_pretrained_feature_dict.npy."
            ) from err
        try:
            with h5py.File(vis_h5, "r") as f:
                visual_ids = set(f.keys())
                _check_shapes({k: f[k].shape for k in f.keys()}, "video", name)
        except OSError as err:
            raise DatasetFormatError(
                f"{name}: {vis_h5} is not a readable HDF5 file ({err}); it is corrupt or partial."
            ) from err
        visual_loader = _H5Feature(str(vis_h5))
    _check_shapes({v: np.shape(x) for v, x in audio.items()}, "audio", name)
    ids = sorted(set(encode.values()))
    if ids != list(range(len(ids))):
        raise DatasetFormatError(
            f"{name}: category_encode_dict.npy maps to class ids {ids[:10]}...; expected 0..N-1."
        )
    names = [None] * len(ids)
    for cat, cid in encode.items():
        names[cid] = str(cat)
    splits = {}
    for split in ("train", "val", "test"):
        if split not in id_cat:
            raise DatasetFormatError(
                f"{name}: all_id_category_dict.npy has no '{split}' entry (has {sorted(id_cat)})."
            )
        vids = sorted(id_cat[split])
        unknown = sorted({id_cat[split][v] for v in vids} - set(encode))
        if unknown:
            raise DatasetFormatError(
                f"{name}: categories {unknown[:5]} of the {split} split are not in "
                "category_encode_dict.npy."
            )
        lacking = [v for v in vids if v not in audio or v not in visual_ids]
        if lacking:
            raise DatasetFormatError(
                f"{name}: {len(lacking)} {split} videos have no audio or visual feature "
                f"(e.g. {lacking[:5]}); every listed video needs both."
            )
        splits[split] = make_multimodal_dataset(
            {
                "audio": LazyModality(vids, _DictFeature(audio)),
                "video": LazyModality(vids, visual_loader),
            },
            [int(encode[id_cat[split][v]]) for v in vids],
        )
    return splits["train"], splits["val"], splits["test"], names


def _avcil(name: str, root, validation: bool) -> MultimodalScenario:
    train, val, test, names = load_avcil_features(name, root=root)
    proto = AVCIL_PROTOCOLS[name]
    if len(names) != proto["num_classes"]:
        raise DatasetFormatError(
            f"{name}: the AV-CIL protocol has {proto['num_classes']} classes, the metadata "
            f"names {len(names)}."
        )
    return class_incremental_scenario(
        train,
        test,
        num_experiences=proto["num_steps"],
        class_order=list(range(len(names))),
        class_names=names,
        valid_dataset=val if validation else None,
        name=name,
        info={"protocol": "AV-CIL", **proto},
    )


@register_benchmark("avcil-ave")
def avcil_ave(*, root, validation: bool = True) -> MultimodalScenario:
    """AV-CIL on AVE features: 28 classes in 4 steps (memory 340)."""
    return _avcil("AVE", root, validation)


@register_benchmark("avcil-kinetics-sounds")
def avcil_kinetics_sounds(*, root, validation: bool = True) -> MultimodalScenario:
    """AV-CIL on Kinetics-Sounds features: 30 classes in 5 steps (memory 500)."""
    return _avcil("kinetics-sounds", root, validation)


@register_benchmark("avcil-vggsound100")
def avcil_vggsound100(*, root, validation: bool = True) -> MultimodalScenario:
    """AV-CIL on VGGSound100 features: 100 classes in 10 steps (memory 1500)."""
    return _avcil("VGGSound_100", root, validation)


# --------------------------------------------------------------------------
# SAMM VGGSound (raw audio and frames)
# --------------------------------------------------------------------------
_VGG_LAYOUT = """\
    <root>/<csv>                      youtube_id,start_seconds,label,split
    <root>/audio/<youtube_id>_<start:06d>.wav
    <root>/images/Image-01-FPS/<youtube_id>_<start:06d>.mp4/<frame>.jpg
"""
_VGG_HOW = (
    "download the VGGSound clips (YouTube ids in vggsound.csv), extract 16 kHz audio and "
    "1 fps frames with the SAMM repository's preprocessing scripts, and use its CSV."
)


def read_wav(path, *, sample_rate: int = 16000) -> torch.Tensor:
    """Read a PCM WAV file as a mono float waveform resampled to ``sample_rate``."""
    try:
        with wave.open(str(path), "rb") as w:
            sr, width, channels, n = w.getframerate(), w.getsampwidth(), w.getnchannels(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError) as err:
        raise DatasetFormatError(f"{path}: not a readable PCM WAV file ({err}).") from err
    dtype = {1: np.uint8, 2: np.int16, 4: np.int32}.get(width)
    if dtype is None:
        raise DatasetFormatError(f"{path}: {8 * width}-bit WAV samples are not supported (8/16/32).")
    data = np.frombuffer(raw, dtype=dtype).astype(np.float32)
    if width == 1:
        data = (data - 128.0) / 128.0
    else:
        data /= float(2 ** (8 * width - 1))
    data = data.reshape(-1, channels).mean(axis=1)
    wav = torch.from_numpy(data)
    if sr != sample_rate and len(wav) > 1:
        new_len = max(1, int(round(len(wav) * sample_rate / sr)))
        wav = torch.nn.functional.interpolate(
            wav[None, None], size=new_len, mode="linear", align_corners=False
        )[0, 0]
    return wav


class _ClipAudio:
    """Picklable loader: wav path -> log spectrogram ``[129, T]``."""

    def __init__(self, clip_seconds: float, sample_rate: int = 16000):
        self.clip_seconds, self.sample_rate = float(clip_seconds), int(sample_rate)

    def __call__(self, path):
        wav = read_wav(path, sample_rate=self.sample_rate)
        need = int(self.clip_seconds * self.sample_rate)
        if len(wav) == 0:
            raise DatasetFormatError(f"{path}: the audio is empty.")
        if len(wav) < need:
            wav = wav.repeat(need // len(wav) + 1)
        wav = wav[:need].clamp(-1, 1)
        spec = torch.stft(wav, n_fft=256, hop_length=128, window=torch.hann_window(256),
                          return_complex=True).abs()
        return torch.log(spec + 1e-7)


class _ClipFrames:
    """Picklable loader: frame folder -> ``FloatTensor[3, F, S, S]``."""

    def __init__(self, num_frames: int, image: ImageFile):
        self.num_frames, self.image = int(num_frames), image

    def __call__(self, folder):
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".png"))
        if not files:
            raise DatasetFormatError(f"{folder}: no frames (.jpg) in the clip folder.")
        pick = np.linspace(0, len(files) - 1, self.num_frames).round().astype(int)
        return torch.stack([self.image(files[i]) for i in pick], dim=1)


def read_vggsound_csv(path: Path) -> List[tuple]:
    """Rows ``(youtube_id, start_seconds, label, split)`` of a VGGSound CSV."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) < 4:
                raise DatasetFormatError(
                    f"{path}, line {i + 1}: expected youtube_id,start_seconds,label,split; got {row}."
                )
            if i == 0 and not row[1].strip().lstrip("-").isdigit():
                continue  # header
            try:
                start = int(float(row[1]))
            except ValueError as err:
                raise DatasetFormatError(
                    f"{path}, line {i + 1}: start_seconds {row[1]!r} is not a number."
                ) from err
            rows.append((row[0], start, row[2], row[3].strip()))
    if not rows:
        raise DatasetFormatError(f"{path}: no data rows.")
    return rows


def load_vggsound_clips(
    *,
    root,
    csv_name: str = "vggsound_samm.csv",
    num_frames: int = 3,
    image_size: int = 224,
    clip_seconds: float = 5.0,
    image_transform: Optional[Callable] = None,
    label_map: Optional[Callable[[str], Optional[str]]] = None,
):
    """VGGSound clips of the SAMM benchmarks.

    :param root: folder with the CSV, ``audio/`` and ``images/Image-01-FPS/``.
    :param csv_name: the CSV file name under root.
    :param num_frames: frames per clip.
    :param image_size: frame side after resize and centre crop.
    :param clip_seconds: seconds of audio per clip.
    :param image_transform: PIL -> tensor transform replacing the default.
    :param label_map: optional label -> target label (None drops the row).
    :return: ``(train, test, class_names, train_labels, test_labels)``.
    """
    root = as_root(root, "VGGSound")
    require(root, [csv_name, "audio", "images/Image-01-FPS"], dataset="VGGSound",
            layout=_VGG_LAYOUT, how_to_get=_VGG_HOW)
    rows = read_vggsound_csv(root / csv_name)
    names: List[str] = []
    per_split: Dict[str, List[tuple]] = {"train": [], "test": []}
    missing = []
    for ytid, start, label, split in rows:
        if split not in per_split:
            continue
        target_label = label if label_map is None else label_map(label)
        if target_label is None:
            continue
        key = f"{ytid}_{start:06d}"
        wav, frames = root / "audio" / f"{key}.wav", root / "images" / "Image-01-FPS" / f"{key}.mp4"
        for p in (wav, frames):
            if not p.exists():
                missing.append(str(p.relative_to(root)))
        if split == "train" and target_label not in names:
            names.append(target_label)
        per_split[split].append((str(wav), str(frames), target_label, label))
    if missing:
        raise not_found("VGGSound", root, missing, layout=_VGG_LAYOUT, how_to_get=_VGG_HOW)
    unknown = sorted({r[2] for r in per_split["test"]} - set(names))
    if unknown:
        raise DatasetFormatError(f"VGGSound: test labels {unknown[:5]} have no training rows.")
    for split in ("train", "test"):
        if not per_split[split]:
            raise DatasetFormatError(f"VGGSound: the CSV has no '{split}' rows.")
    image = ImageFile(size=image_size, transform=image_transform)
    out = []
    for split in ("train", "test"):
        rows_s = per_split[split]
        out.append(
            make_multimodal_dataset(
                {
                    "audio": LazyModality([r[0] for r in rows_s], _ClipAudio(clip_seconds)),
                    "video": LazyModality([r[1] for r in rows_s], _ClipFrames(num_frames, image)),
                },
                [names.index(r[2]) for r in rows_s],
            )
        )
    return out[0], out[1], names, [r[3] for r in per_split["train"]], [r[3] for r in per_split["test"]]


@register_benchmark("seq-vggsound")
def seq_vggsound(
    *,
    root,
    csv_name: str = "vggsound_samm.csv",
    num_experiences: int = 10,
    seed: int = 0,
    num_frames: int = 3,
    image_size: int = 224,
    clip_seconds: float = 5.0,
) -> MultimodalScenario:
    """SAMM Seq-VGGSound: class-incremental audio-visual, 100 classes in 10 tasks."""
    train, test, names, _, _ = load_vggsound_clips(
        root=root, csv_name=csv_name, num_frames=num_frames, image_size=image_size,
        clip_seconds=clip_seconds,
    )
    return class_incremental_scenario(
        train, test, num_experiences=num_experiences, seed=seed, class_names=names,
        name="Seq-VGGSound", info={"protocol": "SAMM"},
    )


def read_categories_csv(path: Path) -> List[tuple]:
    """Rows ``(category, label)`` of SAMM's categories CSV (header ``category,label,...``)."""
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"category", "label"} <= set(reader.fieldnames):
            raise DatasetFormatError(
                f"{path}: expected a header with 'category' and 'label' columns, got "
                f"{reader.fieldnames}."
            )
        for row in reader:
            if row["category"] and row["label"]:
                out.append((row["category"].strip(), row["label"].strip()))
    return out


@register_benchmark("dom-vggsound")
def dom_vggsound(
    *,
    root,
    csv_name: str = "vggsound_samm.csv",
    categories_csv: str = "vggsound_categories.csv",
    num_experiences: int = 5,
    num_frames: int = 3,
    image_size: int = 224,
    clip_seconds: float = 5.0,
) -> MultimodalScenario:
    """SAMM Dom-VGGSound: domain-incremental, super-category targets, new sub-classes per task."""
    root_p = as_root(root, "VGGSound")
    require(root_p, [categories_csv], dataset="Dom-VGGSound",
            layout=_VGG_LAYOUT + f"    <root>/{categories_csv}   category,label\n",
            how_to_get=_VGG_HOW)
    cats = read_categories_csv(root_p / categories_csv)
    by_cat: Dict[str, List[str]] = {}
    for cat, label in cats:
        by_cat.setdefault(cat, []).append(label)
    task_of = {}
    for cat, labels in by_cat.items():
        if len(labels) % num_experiences:
            raise ValueError(
                f"Dom-VGGSound: category {cat!r} has {len(labels)} classes, which cannot be "
                f"split evenly into {num_experiences} tasks; pick num_experiences dividing it."
            )
        per = len(labels) // num_experiences
        for i, label in enumerate(labels):
            task_of[label] = i // per
    super_of = {label: cat for cat, label in cats}
    train, test, names, tr_fine, te_fine = load_vggsound_clips(
        root=root, csv_name=csv_name, num_frames=num_frames, image_size=image_size,
        clip_seconds=clip_seconds, label_map=super_of.get,
    )
    trains, tests = [], []
    for k in range(num_experiences):
        tr_idx = [i for i, f in enumerate(tr_fine) if task_of.get(f) == k]
        te_idx = [i for i, f in enumerate(te_fine) if task_of.get(f) == k]
        if not tr_idx or not te_idx:
            raise DatasetFormatError(f"Dom-VGGSound: task {k} has no training or test clips.")
        trains.append(train.subset(tr_idx))
        tests.append(test.subset(te_idx))
    return domain_incremental_scenario(
        trains, tests, domain_names=[f"subclasses-{k}" for k in range(num_experiences)],
        class_names=names, info={"protocol": "SAMM Dom-VGGSound"},
    )


@register_benchmark("gcil-vggsound")
def gcil_vggsound(
    *,
    root,
    csv_name: str = "vggsound_samm.csv",
    num_experiences: int = 20,
    samples_per_experience: int = 1000,
    max_classes_per_experience: int = 10,
    distribution: str = "uniform",
    seed: int = 0,
    num_frames: int = 3,
    image_size: int = 224,
    clip_seconds: float = 5.0,
) -> MultimodalScenario:
    """SAMM GCIL-VGGSound: generalised class-incremental (uniform or long-tail)."""
    train, test, names, _, _ = load_vggsound_clips(
        root=root, csv_name=csv_name, num_frames=num_frames, image_size=image_size,
        clip_seconds=clip_seconds,
    )
    return gcil_scenario(
        train, test, num_experiences=num_experiences,
        samples_per_experience=samples_per_experience,
        max_classes_per_experience=max_classes_per_experience, distribution=distribution,
        seed=seed, class_names=names, name="GCIL-VGGSound",
    )


__all__ = [
    "AVCIL_PROTOCOLS",
    "load_avcil_features",
    "avcil_ave",
    "avcil_kinetics_sounds",
    "avcil_vggsound100",
    "read_wav",
    "read_vggsound_csv",
    "read_categories_csv",
    "load_vggsound_clips",
    "seq_vggsound",
    "dom_vggsound",
    "gcil_vggsound",
]
