"""Retrieval, audio-visual and egocentric loaders on fixtures in the real formats."""

import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from avalanche_mm.benchmarks import get_benchmark
from avalanche_mm.benchmarks.datasets import (
    AVCIL_PROTOCOLS,
    DatasetFormatError,
    DatasetNotFoundError,
    legacy_class_order,
    load_avcil_features,
    load_karpathy_pairs,
    load_uestc_mmea,
    load_vggsound_clips,
    read_wav,
)

from mmbench_fixtures import (
    text,
    wav,
    write_avcil,
    write_karpathy,
    write_uestc,
    write_vggsound,
)


# --------------------------------------------------------------------------
# COCO / Flickr30K (Karpathy JSON)
# --------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["flickr30k", "coco"])
def test_karpathy_retrieval_phases(tmp_path, dataset):
    write_karpathy(tmp_path, dataset=dataset, n_images=10)
    bench = get_benchmark(f"{dataset}-retrieval", root=str(tmp_path), num_phases=3, image_size=8)
    phases = [set(e.dataset.targets.uniques) for e in bench.train_stream]
    assert len(phases) == 3 and sum(len(p) for p in phases) == 6  # 6 training images
    for i in range(3):
        for j in range(i):
            assert not phases[i] & phases[j]  # no image in two phases
    assert sum(len(e.dataset) for e in bench.train_stream) == 12  # 2 captions per image
    test = bench.test_stream[0]
    assert test.dataset_name == f"{dataset}-test" and len(test.dataset) == 4
    assert bench.valid_stream[0].dataset_name == f"{dataset}-val"
    x, y, _ = test.dataset[0]
    assert x["image"].shape == (3, 8, 8) and x["text"].dtype == torch.long and y == 8


def test_karpathy_captions_per_image_and_raw_captions(tmp_path):
    write_karpathy(tmp_path, n_images=10)
    pairs, captions = load_karpathy_pairs(
        "flickr30k", root=tmp_path, splits=("test",), captions_per_image=1, image_size=8
    )
    assert len(pairs) == 2 and captions == ["a photo number 8 of a dog", "a photo number 9 of a dog"]


def test_karpathy_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="dataset_flickr30k.json"):
        load_karpathy_pairs("flickr30k", root=tmp_path)
    write_karpathy(tmp_path, n_images=10)
    os.remove(tmp_path / "flickr30k-images" / "1000.jpg")
    with pytest.raises(DatasetNotFoundError, match=r"flickr30k-images/1000\.jpg"):
        load_karpathy_pairs("flickr30k", root=tmp_path)
    text(tmp_path / "dataset_flickr30k.json", '{"images": [{"filename": "x.jpg",')
    with pytest.raises(DatasetFormatError, match="not valid JSON.*line 1"):
        load_karpathy_pairs("flickr30k", root=tmp_path)
    text(tmp_path / "dataset_flickr30k.json", '{"images": [{"filename": "x.jpg", "split": "test"}]}')
    with pytest.raises(DatasetFormatError, match=r"lacks \['sentences'\]"):
        load_karpathy_pairs("flickr30k", root=tmp_path, splits=("test",))
    with pytest.raises(ValueError, match="coco"):
        load_karpathy_pairs("vqa", root=tmp_path)


# --------------------------------------------------------------------------
# AV-CIL features
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(AVCIL_PROTOCOLS))
def test_avcil_protocols(tmp_path, name):
    proto = AVCIL_PROTOCOLS[name]
    write_avcil(tmp_path, name=name, n_classes=proto["num_classes"], per_class=1)
    key = {"AVE": "avcil-ave", "kinetics-sounds": "avcil-kinetics-sounds",
           "VGGSound_100": "avcil-vggsound100"}[name]
    bench = get_benchmark(key, root=str(tmp_path))
    assert len(bench.train_stream) == proto["num_steps"]
    per = proto["num_classes"] // proto["num_steps"]
    for i, exp in enumerate(bench.train_stream):
        assert sorted(exp.classes_in_this_experience) == list(range(i * per, (i + 1) * per))
    assert bench.info["memory_size"] == proto["memory_size"]
    assert len(bench.valid_stream) == proto["num_steps"]
    data = bench.train_stream[0].dataset
    x, y, t = next(iter(DataLoader(data, batch_size=3, collate_fn=data.collate_fn)))
    assert x["audio"].shape == (3, 4, 6) and x["video"].shape == (3, 3, 5)
    assert bench.class_names[0] == "category 0"


def test_avcil_feature_values_match_the_files(tmp_path):
    audio, visual = write_avcil(tmp_path, n_classes=28, per_class=1)
    train, val, test, names = load_avcil_features("AVE", root=tmp_path)
    vid = sorted(k for k in audio if k.startswith("train"))[0]
    x, y, _ = train[0]
    assert torch.allclose(x["audio"], torch.from_numpy(audio[vid]))
    assert torch.allclose(x["video"], torch.from_numpy(visual[vid]))


def test_avcil_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="all_id_category_dict.npy"):
        load_avcil_features("AVE", root=tmp_path)
    audio, visual = write_avcil(tmp_path, n_classes=28, per_class=1)
    path = tmp_path / "AVE" / "audio_pretrained_feature" / "audio_pretrained_feature_dict.npy"
    bad = dict(audio)
    bad["train_0_0"] = np.zeros((7, 6), dtype=np.float32)
    np.save(path, bad)
    with pytest.raises(DatasetFormatError, match="inconsistent shapes"):
        load_avcil_features("AVE", root=tmp_path)
    partial = {k: v for k, v in audio.items() if k != "test_3_0"}
    np.save(path, partial)
    with pytest.raises(DatasetFormatError, match="no audio or visual feature.*test_3_0"):
        load_avcil_features("AVE", root=tmp_path)
    path.write_bytes(b"garbage")
    with pytest.raises(DatasetFormatError, match="corrupt"):
        load_avcil_features("AVE", root=tmp_path)
    with pytest.raises(KeyError, match="choose among"):
        load_avcil_features("UCF101", root=tmp_path)


def test_avcil_hdf5_visual_features_are_checked(tmp_path):
    write_avcil(tmp_path, n_classes=28, per_class=1)
    vis = tmp_path / "AVE" / "visual_pretrained_feature"
    os.remove(vis / "visual_pretrained_feature_dict.npy")
    (vis / "visual_features.h5").write_bytes(b"not hdf5")
    # without h5py: a message naming it; with h5py: the file is reported corrupt
    with pytest.raises((ImportError, DatasetFormatError), match="h5"):
        load_avcil_features("AVE", root=tmp_path)


# --------------------------------------------------------------------------
# SAMM VGGSound
# --------------------------------------------------------------------------
def test_read_wav_resamples_and_mixes_to_mono(tmp_path):
    wav(tmp_path / "a.wav", seconds=0.5, sr=8000)
    w = read_wav(tmp_path / "a.wav", sample_rate=16000)
    assert w.shape == (16000 // 2,) and float(w.abs().max()) == pytest.approx(0.5, abs=0.02)
    (tmp_path / "b.wav").write_bytes(b"RIFFxxxx")
    with pytest.raises(DatasetFormatError, match="WAV"):
        read_wav(tmp_path / "b.wav")


def test_seq_and_gcil_vggsound(tmp_path):
    labels = [f"sound {i}" for i in range(4)]
    write_vggsound(tmp_path, labels)
    bench = get_benchmark("seq-vggsound", root=str(tmp_path), num_experiences=2, image_size=8,
                          clip_seconds=0.5)
    assert len(bench.train_stream) == 2 and sorted(bench.class_names) == labels
    x, y, _ = bench.train_stream[0].dataset[0]
    assert x["audio"].shape == (129, 63) and x["video"].shape == (3, 3, 8, 8)
    g = get_benchmark("gcil-vggsound", root=str(tmp_path), num_experiences=3,
                      samples_per_experience=2, max_classes_per_experience=2, image_size=8,
                      clip_seconds=0.5)
    assert len(g.train_stream) == 3


def test_dom_vggsound_targets_are_super_categories(tmp_path):
    labels = ["dog barking", "cat purring", "playing piano", "playing flute"]
    write_vggsound(tmp_path, labels)
    text(tmp_path / "vggsound_categories.csv",
         "category,label,test,train\nanimals,dog barking,1,2\nanimals,cat purring,1,2\n"
         "music,playing piano,1,2\nmusic,playing flute,1,2\n")
    bench = get_benchmark("dom-vggsound", root=str(tmp_path), num_experiences=2, image_size=8,
                          clip_seconds=0.5)
    assert bench.class_names == ["animals", "music"]
    for exp in bench.train_stream:
        assert set(exp.classes_in_this_experience) == {0, 1}
    with pytest.raises(ValueError, match="split evenly"):
        get_benchmark("dom-vggsound", root=str(tmp_path), num_experiences=3)


def test_vggsound_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="vggsound_samm.csv"):
        load_vggsound_clips(root=tmp_path)
    write_vggsound(tmp_path, ["a", "b"])
    os.remove(tmp_path / "audio" / "yt0000_000010.wav")
    with pytest.raises(DatasetNotFoundError, match=r"audio/yt0000_000010\.wav"):
        load_vggsound_clips(root=tmp_path)
    text(tmp_path / "vggsound_samm.csv", "yt0001,11\n")
    with pytest.raises(DatasetFormatError, match="line 1"):
        load_vggsound_clips(root=tmp_path)


# --------------------------------------------------------------------------
# UESTC-MMEA-CL
# --------------------------------------------------------------------------
def test_uestc_mmea_cl(tmp_path):
    write_uestc(tmp_path, n_classes=4)
    train, val, test, names = load_uestc_mmea(root=tmp_path, num_segments=3, image_size=8)
    assert names == ["upstairs", "downstairs", "write", "watch TV"]
    assert len(train) == 8 and len(val) == 4 and len(test) == 4
    x, y, _ = train[0]
    assert x["video"].shape == (3, 3, 8, 8)
    assert x["accelerometer"].shape[0] == 3 and x["gyroscope"].shape[0] == 3
    batch = next(iter(DataLoader(train, batch_size=4, collate_fn=train.collate_fn)))[0]
    assert sorted(set(batch.lengths["accelerometer"].tolist())) == [20, 24]  # padded lengths
    bench = get_benchmark("uestc-mmea-cl", root=str(tmp_path), classes_per_step=2,
                          num_segments=3, image_size=8)
    order = legacy_class_order(4, 1993)
    assert set(bench.train_stream[0].classes_in_this_experience) == set(order[:2])
    assert len(bench.valid_stream) == 2


def test_uestc_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="train.txt"):
        load_uestc_mmea(root=tmp_path)
    write_uestc(tmp_path, n_classes=2)
    clip = next((tmp_path / "sensor" / "1_upstairs").glob("*.csv"))
    os.remove(clip)
    with pytest.raises(DatasetNotFoundError, match=clip.name):
        load_uestc_mmea(root=tmp_path)
    text(tmp_path / "train.txt", "only_two fields\n")
    with pytest.raises(DatasetFormatError, match="line 1"):
        load_uestc_mmea(root=tmp_path)
    with pytest.raises(ValueError, match="subset"):
        load_uestc_mmea(root=tmp_path, modalities=("depth",))


def test_avcil_hdf5_visual_features_are_read(tmp_path):
    import h5py  # installed by the "test" extra (and the "av" extra)
    audio, visual = write_avcil(tmp_path, n_classes=28, per_class=1)
    vis = tmp_path / "AVE" / "visual_pretrained_feature"
    os.remove(vis / "visual_pretrained_feature_dict.npy")
    with h5py.File(vis / "visual_features.h5", "w") as f:
        for vid, feat in visual.items():
            f.create_dataset(vid, data=feat)
    train, _, test, _ = load_avcil_features("AVE", root=tmp_path)
    vid = sorted(k for k in visual if k.startswith("test"))[0]
    x, _, _ = test[0]
    assert torch.allclose(x["video"], torch.from_numpy(visual[vid]))
    import pickle

    x2, _, _ = pickle.loads(pickle.dumps(test))[0]  # the lazy HDF5 loader survives pickling
    assert torch.allclose(x2["video"], x["video"])
