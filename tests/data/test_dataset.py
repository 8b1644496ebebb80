import numpy as np
import pytest
import torch
from avalanche.benchmarks.utils.classification_dataset import TaskAwareSupervisedClassificationDataset
from avalanche.training.storage_policy import ClassBalancedBuffer
from torch.utils.data import DataLoader

from avalanche_mm.data import (
    LazyModality,
    MultimodalBatch,
    WordTokenizer,
    get_modality_specs,
    make_multimodal_dataset,
    make_pair_dataset,
)


def _ds(**kw):
    n = 6
    return make_multimodal_dataset(
        {
            "image": torch.randn(n, 3, 4, 4),
            "text": [torch.arange(1, 2 + i % 3) for i in range(n)],
            "audio": np.random.randn(n, 1, 8),
        },
        [0, 1, 2, 0, 1, 2],
        **kw,
    )


def test_task_aware_avalanche_dataset_with_multimodal_collate():
    ds = _ds(task_labels=[0, 0, 0, 1, 1, 1])
    assert isinstance(ds, TaskAwareSupervisedClassificationDataset)
    assert list(ds.targets) == [0, 1, 2, 0, 1, 2]
    assert sorted(ds.task_set.keys()) == [0, 1]
    x, y, t = ds[4]
    assert set(x) == {"image", "text", "audio"} and y == 1 and t == 1
    specs = get_modality_specs(ds)
    assert specs["text"].variable and specs["audio"].dtype == torch.float32
    xb, yb, tb = next(iter(DataLoader(ds, batch_size=6, collate_fn=ds.collate_fn)))
    assert isinstance(xb, MultimodalBatch) and xb["text"].shape == (6, 3)


def test_subset_and_concat_keep_collate_and_attributes():
    ds = _ds()
    sub = ds.subset([0, 2])
    both = sub.concat(ds.subset([1]))
    assert both.collate_fn == ds.collate_fn
    assert list(both.targets) == [0, 2, 1]
    assert len(both.targets_task_labels) == 3


def test_storage_policy_buffer_keeps_multimodal_samples():
    ds = _ds()

    class _Exp:
        dataset = ds

    class _Strategy:
        experience = _Exp()

    buf = ClassBalancedBuffer(max_size=3, adaptive_size=True)
    buf.post_adapt(_Strategy(), _Exp())
    assert len(buf.buffer) == 3
    xb, _, _ = next(iter(DataLoader(buf.buffer, batch_size=3, collate_fn=buf.buffer.collate_fn)))
    assert isinstance(xb, MultimodalBatch)


def test_missing_mask_and_tokenizer():
    tok = WordTokenizer(["red", "dog"])
    ds = make_multimodal_dataset(
        {"text": ["a red dog", "dog"], "audio": torch.randn(2, 5)},
        [0, 1],
        tokenizers={"text": tok},
        missing={"audio": [False, True]},
    )
    assert ds[1][0]["audio"] is None
    assert ds[0][0]["text"].tolist() == [1, 2, 3]
    xb, _, _ = ds.collate_fn([ds[0], ds[1]])
    assert xb.present["audio"].tolist() == [True, False]


def test_lazy_modality_loads_on_access(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.npy"
        np.save(p, np.full(4, i, dtype=np.float32))
        paths.append(str(p))
    calls = []

    def loader(path):
        calls.append(path)
        return np.load(path)

    ds = make_multimodal_dataset({"sig": LazyModality(paths, loader)}, [0, 1, 2])
    calls.clear()
    assert ds[2][0]["sig"].tolist() == [2, 2, 2, 2] and calls == [paths[2]]
    bad = make_multimodal_dataset({"sig": LazyModality(paths + [str(tmp_path / "nope.npy")], loader)}, [0, 1, 2, 0], specs=get_modality_specs(ds))
    with pytest.raises(FileNotFoundError, match="item 3"):
        bad[3]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(modalities={}, targets=[0]), ValueError, "non-empty mapping"),
        (dict(modalities={"a": torch.ones(2, 3)}, targets=[]), ValueError, "empty"),
        (dict(modalities={"a": torch.ones(2, 3)}, targets=[0, 1, 2]), ValueError, "'a' has 2 samples but there are 3 targets"),
        (dict(modalities={"a": ["txt", "txt"]}, targets=[0, 1]), TypeError, "tokenizers="),
        (dict(modalities={"a": torch.ones(2, 3)}, targets=[0, 1], missing={"b": [True, False]}), KeyError, "'b'"),
        (dict(modalities={"a": [torch.ones(2), torch.ones(3, dtype=torch.long)]}, targets=[0, 1]), TypeError, "dtype"),
        (dict(modalities={"a": torch.ones(2, 3)}, targets=["x", "y"]), TypeError, r"targets\[0\]: got .x. of type str"),
        (dict(modalities={"a": torch.ones(2, 3)}, targets=[0, 1], task_labels=[0]), ValueError, "task_labels has 1"),
    ],
)
def test_bad_input_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        make_multimodal_dataset(kwargs.pop("modalities"), kwargs.pop("targets"), **kwargs)


def test_pair_dataset_targets_are_instance_ids():
    tok = WordTokenizer(["a", "cat", "dog"])
    ds = make_pair_dataset(torch.randn(3, 3, 4, 4), ["a cat", "a dog", "dog"], tokenizer=tok, task_labels=2)
    assert list(ds.targets) == [0, 1, 2]
    x, y, t = ds[1]
    assert set(x) == {"image", "text"} and y == 1 and t == 2
    with pytest.raises(ValueError, match="3 images but 2 texts"):
        make_pair_dataset(torch.randn(3, 3, 4, 4), ["a", "b"], tokenizer=tok)


@pytest.mark.parametrize(
    "targets, error, match",
    [
        ([0.0, 1.0], TypeError, r"targets\[0\]: got 0.0 of type float"),
        ([True, False], TypeError, r"targets\[0\]: got True of type bool"),
        (["0", "1"], TypeError, r"of type str"),
        ([0, -1], ValueError, r"targets\[1\]: got -1, expected an integer >= 0"),
        ([0, float("nan")], TypeError, r"non-finite"),
        (torch.tensor([0.0, 1.0]), TypeError, "dtype torch.float32"),
        (np.array([True, False]), TypeError, "dtype bool"),
    ],
)
def test_labels_must_be_non_negative_integers(targets, error, match):
    with pytest.raises(error, match=match):
        make_multimodal_dataset({"a": torch.ones(2, 3)}, targets)


def test_task_labels_must_be_non_negative_integers():
    with pytest.raises(ValueError, match="task_labels"):
        make_multimodal_dataset({"a": torch.ones(2, 3)}, [0, 1], task_labels=-1)
    with pytest.raises(ValueError, match=r"task_labels\[0\]: got -2"):
        make_multimodal_dataset({"a": torch.ones(2, 3)}, [0, 1], task_labels=[-2, 0])
    ds = make_multimodal_dataset({"a": torch.ones(2, 3)}, np.array([0, 1]), task_labels=torch.tensor([1, 1]))
    assert list(ds.targets) == [0, 1]


def test_non_finite_inputs_found_at_build():
    x = torch.ones(4, 3)
    x[2, 1] = float("nan")
    with pytest.raises(ValueError, match="sample 2, modality 'audio': holds NaN or infinite"):
        make_multimodal_dataset({"image": torch.ones(4, 2), "audio": x}, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="sample 1, modality 'v'"):
        make_multimodal_dataset({"v": [torch.ones(2), torch.tensor([float("inf")])]}, [0, 1])
