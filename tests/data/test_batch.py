import copy
import pickle

import pytest
import torch

from avalanche_mm.data import MultimodalBatch, batch_size, cat_batches, index_batch, to_device


def _batch():
    return MultimodalBatch(
        {"image": torch.randn(3, 2, 4, 4), "text": torch.tensor([[5, 6, 0], [7, 0, 0], [8, 9, 4]])},
        present={"image": torch.tensor([True, False, True])},
        lengths={"text": torch.tensor([2, 1, 3])},
    )


def test_len_is_batch_size_and_defaults():
    b = _batch()
    assert len(b) == 3 and b.batch_size == 3
    assert b.modalities == ("image", "text")
    assert b.present["text"].all() and not b.present["image"][1]


def test_padding_mask_from_lengths():
    mask = _batch().padding_mask("text")
    assert mask.tolist() == [[True, True, False], [True, False, False], [True, True, True]]


def test_missing_key_error_explains_presence_masks():
    with pytest.raises(KeyError, match="None where it is missing"):
        _batch()["audio"]


def test_batch_size_mismatch_rejected():
    with pytest.raises(ValueError, match="same batch size"):
        MultimodalBatch({"a": torch.zeros(2, 3), "b": torch.zeros(3, 3)})


def test_bad_mask_shape_rejected():
    with pytest.raises(ValueError, match=r"present\['a'\] must have shape \(2,\)"):
        MultimodalBatch({"a": torch.zeros(2, 3)}, present={"a": torch.ones(3, dtype=torch.bool)})


def test_select_keeps_masks_and_lengths():
    b = _batch().select(torch.tensor([False, True, True]))
    assert len(b) == 2
    assert b.lengths["text"].tolist() == [1, 3]
    assert b.present["image"].tolist() == [False, True]


def test_drop_blanks_data_and_mask():
    b = _batch().drop("image")
    assert not b.present["image"].any()
    assert torch.count_nonzero(b["image"]) == 0
    assert torch.equal(b["text"], _batch()["text"])
    with pytest.raises(KeyError):
        _batch().drop("audio")
    kept = _batch().keep(["text"])
    assert not kept.present["image"].any() and kept.present["text"].all()


def test_cat_repads_variable_modalities():
    a = _batch()
    b = MultimodalBatch(
        {"image": torch.randn(1, 2, 4, 4), "text": torch.tensor([[1, 2, 3, 4, 5]])},
        lengths={"text": torch.tensor([5])},
    )
    c = cat_batches([a, b])
    assert c["text"].shape == (4, 5)
    assert c.lengths["text"].tolist() == [2, 1, 3, 5]
    assert c.present["image"].tolist() == [True, False, True, True]
    assert c["text"][0].tolist() == [5, 6, 0, 0, 0]


def test_to_device_nested_structures():
    nested = {"mm": _batch(), "pair": (torch.zeros(2), [torch.ones(1)]), "n": 3}
    moved = to_device(nested, "meta")
    assert moved["mm"]["image"].is_meta and moved["mm"].present["image"].is_meta
    assert moved["mm"].lengths["text"].is_meta
    assert moved["pair"][0].is_meta and moved["pair"][1][0].is_meta
    assert isinstance(moved["pair"], tuple) and isinstance(moved["pair"][1], list)
    assert moved["n"] == 3


def test_dtype_cast_only_touches_float_modalities():
    b = _batch().to(torch.float64)
    assert b["image"].dtype == torch.float64 and b["text"].dtype == torch.long
    assert b.present["image"].dtype == torch.bool


def test_pickle_and_copy_keep_masks():
    b = _batch()
    for c in (pickle.loads(pickle.dumps(b)), copy.copy(b), copy.deepcopy(b)):
        assert isinstance(c, MultimodalBatch)
        assert c.lengths["text"].tolist() == [2, 1, 3]
        assert c.present["image"].tolist() == [True, False, True]


def test_generic_helpers():
    nested = (_batch(), torch.arange(3))
    assert batch_size(nested) == 3
    sub = index_batch(nested, slice(0, 2))
    assert len(sub[0]) == 2 and sub[1].tolist() == [0, 1]
    with pytest.raises(ValueError):
        cat_batches([])
    with pytest.raises(TypeError):
        batch_size(object())
