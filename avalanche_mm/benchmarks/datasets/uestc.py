"""UESTC-MMEA-CL: egocentric video + accelerometer + gyroscope, 32 activities.

Expected layout (the dataset's release, frames extracted from the videos)::

    <root>/train.txt, val.txt, test.txt
        one clip per line: "<clip path> <num_frames> <num_sensor_rows> <label>"
        (label 0..31; the clip path may be absolute on the authors' machine:
         only its last two components, <class_folder>/<clip>, are used)
    <root>/video/<class_folder>/<clip>/<frame>.jpg
    <root>/sensor/<class_folder>/<clip>.csv
        rows "acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z" (raw sensor counts)

Samples are ``{"video": FloatTensor[3, F, S, S], "accelerometer": [3, L],
"gyroscope": [3, L]}``: ``num_segments`` frames sampled at segment centres;
sensor counts scaled by the sensors' sensitivities (acc / 8192 in g, gyro /
16.4 in deg/s, as in the authors' code); ``L`` is the clip's length
(variable, padded by the collate). Class names come from the class folders
(``"1_upstairs"`` -> ``"upstairs"``). The protocol is class-incremental with
the seed-1993 class order and 4 new classes per step (8 steps); 16 steps of 2
and 4 of 8 are the other published settings. The data is distributed on
request by its authors (no scripted download).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from avalanche_mm.data import LazyModality, make_multimodal_dataset

from ..registry import register_benchmark
from ..scenarios import MultimodalScenario, class_incremental_scenario
from ._common import DatasetFormatError, ImageFile, as_root, legacy_class_order, not_found, require

_LAYOUT = """\
    <root>/train.txt, val.txt, test.txt   "<clip path> <num_frames> <num_sensor_rows> <label>"
    <root>/video/<class_folder>/<clip>/<frame>.jpg
    <root>/sensor/<class_folder>/<clip>.csv
"""
_HOW = (
    "request UESTC-MMEA-CL from its authors (ivipclab), extract the video frames into "
    "video/<class_folder>/<clip>/ and keep the sensor CSVs and file lists as shown."
)
ACC_SENSITIVITY = 8192.0
GYRO_SENSITIVITY = 16.4


def read_file_list(path: Path) -> List[tuple]:
    """``(class_folder, clip, num_frames, label)`` per line of a file list."""
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 4:
                raise DatasetFormatError(
                    f"{path}, line {i + 1}: expected '<clip path> <num_frames> <num_sensor_rows> "
                    f"<label>', got {line.strip()!r}."
                )
            clip_parts = Path(parts[0].replace("\\", "/")).parts
            if len(clip_parts) < 2:
                raise DatasetFormatError(
                    f"{path}, line {i + 1}: the clip path {parts[0]!r} needs <class_folder>/<clip>."
                )
            try:
                nframes, label = int(parts[1]), int(parts[3])
            except ValueError as err:
                raise DatasetFormatError(f"{path}, line {i + 1}: non-integer counts or label.") from err
            out.append((clip_parts[-2], clip_parts[-1], nframes, label))
    if not out:
        raise DatasetFormatError(f"{path}: the file list is empty.")
    return out


class _Frames:
    """Picklable loader: clip folder -> ``[3, F, S, S]`` frames at segment centres."""

    def __init__(self, num_segments: int, image: ImageFile):
        self.num_segments, self.image = int(num_segments), image

    def __call__(self, folder):
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".png"))
        if not files:
            raise DatasetFormatError(f"{folder}: no frames (.jpg) in the clip folder.")
        tick = len(files) / self.num_segments
        pick = [min(int(tick / 2 + tick * k), len(files) - 1) for k in range(self.num_segments)]
        return torch.stack([self.image(files[i]) for i in pick], dim=1)


class _Sensor:
    """Picklable loader: sensor CSV -> ``[3, L]`` (acc or gyro, scaled)."""

    def __init__(self, which: str):
        self.which = which

    def __call__(self, path):
        rows = []
        with open(path, newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.reader(f)):
                if not row:
                    continue
                if len(row) < 6:
                    raise DatasetFormatError(
                        f"{path}, row {i + 1}: expected 6 columns (acc xyz, gyro xyz), got {len(row)}."
                    )
                try:
                    rows.append([float(v) for v in row[:6]])
                except ValueError as err:
                    raise DatasetFormatError(f"{path}, row {i + 1}: non-numeric value.") from err
        if not rows:
            raise DatasetFormatError(f"{path}: the sensor file is empty.")
        data = np.asarray(rows, dtype=np.float32).T
        part = data[:3] / ACC_SENSITIVITY if self.which == "acc" else data[3:6] / GYRO_SENSITIVITY
        return torch.from_numpy(np.ascontiguousarray(part))


def _class_name(folder: str) -> str:
    return re.sub(r"^\d+_", "", folder).replace("_", " ").strip()


def load_uestc_mmea(
    *,
    root,
    num_segments: int = 8,
    image_size: int = 224,
    image_transform: Optional[Callable] = None,
    modalities=("video", "accelerometer", "gyroscope"),
):
    """UESTC-MMEA-CL train/val/test as multimodal datasets.

    :return: ``(train, val, test, class_names)``.
    """
    valid = ("video", "accelerometer", "gyroscope")
    if not modalities or any(m not in valid for m in modalities):
        raise ValueError(f"modalities must be a non-empty subset of {valid}, got {list(modalities)}.")
    root = as_root(root, "UESTC-MMEA-CL")
    require(root, ["train.txt", "val.txt", "test.txt", "video", "sensor"],
            dataset="UESTC-MMEA-CL", layout=_LAYOUT, how_to_get=_HOW)
    lists = {s: read_file_list(root / f"{s}.txt") for s in ("train", "val", "test")}
    folder_of: Dict[int, str] = {}
    for rows in lists.values():
        for cls_folder, _, _, label in rows:
            if folder_of.setdefault(label, cls_folder) != cls_folder:
                raise DatasetFormatError(
                    f"UESTC-MMEA-CL: label {label} is used for both {folder_of[label]!r} and "
                    f"{cls_folder!r} in the file lists."
                )
    labels = sorted(folder_of)
    if labels != list(range(len(labels))):
        raise DatasetFormatError(f"UESTC-MMEA-CL: labels must be 0..N-1, got {labels[:10]}...")
    missing = []
    for rows in lists.values():
        for cls_folder, clip, _, _ in rows:
            if "video" in modalities and not (root / "video" / cls_folder / clip).is_dir():
                missing.append(f"video/{cls_folder}/{clip}/")
            if {"accelerometer", "gyroscope"} & set(modalities) and not (
                root / "sensor" / cls_folder / f"{clip}.csv"
            ).exists():
                missing.append(f"sensor/{cls_folder}/{clip}.csv")
    if missing:
        raise not_found("UESTC-MMEA-CL", root, missing, layout=_LAYOUT, how_to_get=_HOW)
    image = ImageFile(size=image_size, transform=image_transform)
    out = []
    for split in ("train", "val", "test"):
        rows = lists[split]
        cols = {}
        if "video" in modalities:
            cols["video"] = LazyModality(
                [str(root / "video" / r[0] / r[1]) for r in rows], _Frames(num_segments, image)
            )
        sensor_paths = [str(root / "sensor" / r[0] / f"{r[1]}.csv") for r in rows]
        if "accelerometer" in modalities:
            cols["accelerometer"] = LazyModality(sensor_paths, _Sensor("acc"))
        if "gyroscope" in modalities:
            cols["gyroscope"] = LazyModality(sensor_paths, _Sensor("gyro"))
        variable = [m for m in ("accelerometer", "gyroscope") if m in cols]
        out.append(make_multimodal_dataset(cols, [r[3] for r in rows], variable=variable or None))
    return out[0], out[1], out[2], [_class_name(folder_of[i]) for i in labels]


@register_benchmark("uestc-mmea-cl")
def uestc_mmea_cl(
    *,
    root,
    classes_per_step: int = 4,
    class_order=None,
    num_segments: int = 8,
    image_size: int = 224,
    image_transform: Optional[Callable] = None,
    modalities=("video", "accelerometer", "gyroscope"),
) -> MultimodalScenario:
    """UESTC-MMEA-CL class-incremental (video + accelerometer + gyroscope), seed-1993 order."""
    train, val, test, names = load_uestc_mmea(
        root=root, num_segments=num_segments, image_size=image_size,
        image_transform=image_transform, modalities=tuple(modalities),
    )
    order = legacy_class_order(len(names), 1993) if class_order is None else list(class_order)
    return class_incremental_scenario(
        train, test, classes_per_experience=classes_per_step, class_order=order,
        class_names=names, valid_dataset=val, name="UESTC-MMEA-CL",
        info={"protocol": "UESTC-MMEA-CL (PyCIL, seed 1993)"},
    )


__all__ = ["read_file_list", "load_uestc_mmea", "uestc_mmea_cl", "ACC_SENSITIVITY", "GYRO_SENSITIVITY"]
