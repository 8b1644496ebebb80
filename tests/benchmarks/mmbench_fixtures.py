"""Writers of tiny datasets in their real on-disk formats (for the loader tests)."""

import json
import pickle
import struct
import wave
from pathlib import Path

import numpy as np
from PIL import Image


def jpg(path, value=128, size=12):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    arr = (rng.integers(0, 40, (size, size, 3)) + value).clip(0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


def text(path, content):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


# --------------------------------------------------------------------------
# MTIL datasets (2 classes each, a handful of images)
# --------------------------------------------------------------------------
def write_aircraft(root):
    base = Path(root) / "fgvc-aircraft-2013b" / "data"
    text(base / "variants.txt", "707-320\nA300B4\n")
    for i in range(1, 7):
        jpg(base / "images" / f"{i:07d}.jpg", 40 * i)
    cls = ["707-320", "A300B4"]
    text(base / "images_variant_trainval.txt",
         "".join(f"{i:07d} {cls[i % 2]}\n" for i in range(1, 5)))
    text(base / "images_variant_train.txt",  # ZSCL trains on `train` (a subset of trainval)
         "".join(f"{i:07d} {cls[i % 2]}\n" for i in range(1, 4)))
    text(base / "images_variant_test.txt", "".join(f"{i:07d} {cls[i % 2]}\n" for i in (5, 6)))


def write_caltech101(root):
    base = Path(root) / "caltech101" / "101_ObjectCategories"
    for cat in ("BACKGROUND_Google", "Faces_easy", "airplanes"):
        for i in range(1, 4):
            jpg(base / cat / f"image_{i:04d}.jpg", 30 * i)


def write_cifar100_pickles(root, n_train=8, n_test=4, names=("apple", "aquarium_fish", "baby")):
    base = Path(root) / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        d = {
            "data": rng.integers(0, 255, (n, 3072)).astype(np.uint8),
            "fine_labels": [i % len(names) for i in range(n)],
        }
        with open(base / split, "wb") as f:
            pickle.dump(d, f)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": list(names)}, f)


def write_dtd(root):
    base = Path(root) / "dtd" / "dtd"
    files = []
    for cls in ("banded", "blotchy"):
        for i in range(1, 4):
            jpg(base / "images" / cls / f"{cls}_{i:04d}.jpg", 50 * i)
            files.append(f"{cls}/{cls}_{i:04d}.jpg")
    text(base / "labels" / "train1.txt", "\n".join(f for f in files if not f.endswith("3.jpg")) + "\n")
    text(base / "labels" / "val1.txt", "")
    text(base / "labels" / "test1.txt", "\n".join(f for f in files if f.endswith("3.jpg")) + "\n")


def write_eurosat(root):
    for cls in ("AnnualCrop", "Forest"):
        for i in range(3):
            jpg(Path(root) / "eurosat" / "2750" / cls / f"{cls}_{i}.jpg", 60 + 30 * i)


def write_flowers(root):
    from scipy.io import savemat

    base = Path(root) / "flowers-102"
    for i in range(1, 7):
        jpg(base / "jpg" / f"image_{i:05d}.jpg", 30 * i)
    savemat(base / "imagelabels.mat", {"labels": np.array([[1, 1, 2, 2, 1, 2]])})
    savemat(base / "setid.mat", {"trnid": np.array([[1, 3]]), "valid": np.array([[5]]),
                                 "tstid": np.array([[2, 4, 6]])})


def write_food(root):
    base = Path(root) / "food-101"
    meta = {"train": {}, "test": {}}
    for cls in ("apple_pie", "baby_back_ribs"):
        for i in range(3):
            jpg(base / "images" / cls / f"{i}.jpg", 70 * (i + 1))
        meta["train"][cls] = [f"{cls}/0", f"{cls}/1"]
        meta["test"][cls] = [f"{cls}/2"]
    for split in ("train", "test"):
        text(base / "meta" / f"{split}.json", json.dumps(meta[split]))


def write_mnist(root, n=4):
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        with open(raw / f"{prefix}-images-idx3-ubyte", "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28))
            f.write(rng.integers(0, 255, n * 28 * 28).astype(np.uint8).tobytes())
        with open(raw / f"{prefix}-labels-idx1-ubyte", "wb") as f:
            f.write(struct.pack(">II", 2049, n))
            f.write(np.array([i % 10 for i in range(n)], dtype=np.uint8).tobytes())


def write_pets(root):
    base = Path(root) / "oxford-iiit-pet"
    names = ["Abyssinian_1", "Abyssinian_2", "american_bulldog_3", "american_bulldog_4",
             "Abyssinian_5", "american_bulldog_6"]
    for i, n in enumerate(names):
        jpg(base / "images" / f"{n}.jpg", 40 * (i + 1))
    lab = lambda n: 1 if n.startswith("Abyssinian") else 2  # noqa: E731
    text(base / "annotations" / "trainval.txt",
         "".join(f"{n} {lab(n)} {lab(n)} 1\n" for n in names[:4]))
    text(base / "annotations" / "test.txt", "".join(f"{n} {lab(n)} {lab(n)} 1\n" for n in names[4:]))


def write_cars(root):
    from scipy.io import savemat

    base = Path(root) / "stanford_cars"
    (base / "devkit").mkdir(parents=True, exist_ok=True)
    names = np.array(["AM General Hummer SUV 2000", "Acura RL Sedan 2012"], dtype=object)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": names})
    rec = [("fname", "O"), ("class", "O")]
    for split, path in (("train", base / "devkit" / "cars_train_annos.mat"),
                        ("test", base / "cars_test_annos_withlabels.mat")):
        ann = np.array([(f"{i:05d}.jpg", 1 + i % 2) for i in range(1, 4)], dtype=rec)
        savemat(path, {"annotations": ann})
        for i in range(1, 4):
            jpg(base / f"cars_{split}" / f"{i:05d}.jpg", 60 * i)


def write_sun397(root):
    base = Path(root) / "SUN397"
    text(base / "ClassName.txt", "/a/abbey\n/b/beach\n")
    for letter, cls in (("a", "abbey"), ("b", "beach")):
        for i in range(3):
            jpg(base / letter / cls / f"sun_{cls}{i}.jpg", 50 * (i + 1))


MTIL_WRITERS = {
    "Aircraft": write_aircraft,
    "Caltech101": write_caltech101,
    "CIFAR100": write_cifar100_pickles,
    "DTD": write_dtd,
    "EuroSAT": write_eurosat,
    "Flowers": write_flowers,
    "Food": write_food,
    "MNIST": write_mnist,
    "OxfordPet": write_pets,
    "StanfordCars": write_cars,
    "SUN397": write_sun397,
}


# --------------------------------------------------------------------------
# retrieval, audio-visual, egocentric
# --------------------------------------------------------------------------
def write_karpathy(root, dataset="flickr30k", n_images=10):
    root = Path(root)
    images = []
    splits = ["train"] * (n_images - 4) + ["val", "val", "test", "test"]
    for i in range(n_images):
        if dataset == "coco":
            folder, name = ("train2014" if splits[i] == "train" else "val2014"), f"COCO_{i:06d}.jpg"
        else:
            folder, name = "flickr30k-images", f"{1000 + i}.jpg"
        jpg(root / folder / name, 20 * (i + 1))
        rec = {"filename": name, "split": splits[i], "imgid": i,
               "sentences": [{"raw": f"a photo number {i} of a dog", "tokens": []},
                             {"raw": f"picture {i} showing a cat", "tokens": []}]}
        if dataset == "coco":
            rec["filepath"] = folder
        images.append(rec)
    text(root / f"dataset_{dataset}.json", json.dumps({"images": images, "dataset": dataset}))


def write_avcil(root, name="AVE", n_classes=28, per_class=2, audio_shape=(4, 6),
                visual_shape=(3, 5)):
    base = Path(root) / name
    (base / "audio_pretrained_feature").mkdir(parents=True, exist_ok=True)
    (base / "visual_pretrained_feature").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    cats = [f"category {c}" for c in range(n_classes)]
    id_cat, audio, visual = {}, {}, {}
    for split in ("train", "val", "test"):
        id_cat[split] = {}
        for c in range(n_classes):
            for k in range(per_class):
                vid = f"{split}_{c}_{k}"
                id_cat[split][vid] = cats[c]
                audio[vid] = rng.standard_normal(audio_shape).astype(np.float32)
                visual[vid] = rng.standard_normal(visual_shape).astype(np.float32)
    np.save(base / "all_id_category_dict.npy", id_cat)
    np.save(base / "category_encode_dict.npy", {c: i for i, c in enumerate(cats)})
    np.save(base / "audio_pretrained_feature" / "audio_pretrained_feature_dict.npy", audio)
    np.save(base / "visual_pretrained_feature" / "visual_pretrained_feature_dict.npy", visual)
    return audio, visual


def wav(path, seconds=0.25, sr=8000, freq=440.0):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    data = (0.5 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(data.tobytes())


def write_vggsound(root, labels, per_class=(2, 1), csv_name="vggsound_samm.csv", header=True):
    root = Path(root)
    rows = ["youtube_id,start_seconds,label,split"] if header else []
    k = 0
    for label in labels:
        for split, n in zip(("train", "test"), per_class):
            for _ in range(n):
                ytid, start = f"yt{k:04d}", 10 + k
                key = f"{ytid}_{start:06d}"
                wav(root / "audio" / f"{key}.wav", freq=200 + 40 * k)
                for f in range(3):
                    jpg(root / "images" / "Image-01-FPS" / f"{key}.mp4" / f"{f:06d}.jpg", 30 * f + k)
                rows.append(f'{ytid},{start},"{label}",{split}')
                k += 1
    text(root / csv_name, "\n".join(rows) + "\n")


def write_uestc(root, n_classes=4, per_split=(2, 1, 1), sensor_rows=(20, 24)):
    root = Path(root)
    folders = ["1_upstairs", "2_downstairs", "3_write", "4_watch_TV"][:n_classes]
    rng = np.random.default_rng(0)
    lines = {"train": [], "val": [], "test": []}
    k = 0
    for label, folder in enumerate(folders):
        for split, n in zip(("train", "val", "test"), per_split):
            for _ in range(n):
                clip = f"{folder}_clip{k}"
                for f in range(5):
                    jpg(root / "video" / folder / clip / f"img_{f:06d}.jpg", 20 * f + label)
                rows = sensor_rows[k % len(sensor_rows)]
                data = rng.integers(-9000, 9000, (rows, 6))
                text(root / "sensor" / folder / f"{clip}.csv",
                     "\n".join(",".join(str(v) for v in r) for r in data) + "\n")
                lines[split].append(f"/home/someone/data/{folder}/{clip} 5 {rows} {label}")
                k += 1
    for split, ls in lines.items():
        text(root / f"{split}.txt", "\n".join(ls) + "\n")
    return folders
