import numpy as np
import pytest
import torch

from avalanche_mm.data import ModalitySpec, MultimodalCollate, infer_specs


def _s(x, y=0, t=0):
    return (x, y, t)


def test_stacks_pads_and_masks():
    samples = [
        _s({"img": torch.ones(2, 2), "txt": torch.tensor([3, 4, 5]), "aud": torch.ones(4)}, 1),
        _s({"img": torch.zeros(2, 2), "txt": torch.tensor([7]), "aud": None}, 2),
    ]
    x, y, t = MultimodalCollate()(samples)
    assert x["img"].shape == (2, 2, 2)
    assert x["txt"].tolist() == [[3, 4, 5], [7, 0, 0]]
    assert x.lengths["txt"].tolist() == [3, 1]
    assert x.present["aud"].tolist() == [True, False]
    assert torch.count_nonzero(x["aud"][1]) == 0
    assert y.tolist() == [1, 2] and t.tolist() == [0, 0]


def test_spec_driven_padding_and_fully_missing_modality():
    specs = {
        "txt": ModalitySpec("txt", torch.long, (None,), pad_value=-1),
        "aud": ModalitySpec("aud", torch.float32, (1, 8)),
    }
    samples = [_s({"txt": torch.tensor([1, 2]), "aud": None}), _s({"txt": torch.tensor([3, 4]), "aud": None})]
    x, _, _ = MultimodalCollate(specs)(samples)
    assert "txt" in x.lengths  # declared variable even though lengths agree here
    assert x["aud"].shape == (2, 1, 8) and not x.present["aud"].any()
    x2, _, _ = MultimodalCollate(specs)([_s({"txt": torch.tensor([1, 2, 3]), "aud": None}), samples[0]])
    assert x2["txt"][1].tolist() == [1, 2, -1]


@pytest.mark.parametrize(
    "second, error, match",
    [
        ({"img": torch.ones(2, 2)}, ValueError, r"sample 1 lacks \['txt'\]"),
        ({"img": torch.ones(2, 2), "txt": torch.ones(3), "zzz": torch.ones(1)}, ValueError, r"sample 1 has unexpected \['zzz'\]"),
        ({"img": torch.ones(3, 2), "txt": torch.tensor([1])}, ValueError, r"sample 1, modality 'img': shape \(3, 2\)"),
        ({"img": torch.ones(2, 2, dtype=torch.float64), "txt": torch.tensor([1])}, TypeError, r"sample 1, modality 'img': dtype torch.float64"),
    ],
)
def test_disagreeing_samples_are_rejected_with_index_and_modality(second, error, match):
    first = {"img": torch.ones(2, 2), "txt": torch.tensor([1, 2])}
    with pytest.raises(error, match=match):
        MultimodalCollate()([_s(first), _s(second)])


def test_spec_mismatch_names_expected_spec():
    specs = {"img": ModalitySpec("img", torch.float32, (3, 4, 4))}
    with pytest.raises(ValueError, match=r"expected img: \[3, 4, 4\] float32"):
        MultimodalCollate(specs)([_s({"img": torch.ones(3, 5, 4)})])
    with pytest.raises(TypeError, match="dtype torch.int64, expected torch.float32"):
        MultimodalCollate(specs)([_s({"img": torch.ones(3, 4, 4, dtype=torch.long)})])


def test_missing_everywhere_without_spec_is_an_error():
    with pytest.raises(ValueError, match="missing in every sample"):
        MultimodalCollate()([_s({"a": None}), _s({"a": None})])


def test_empty_and_non_dict_inputs():
    with pytest.raises(ValueError, match="empty"):
        MultimodalCollate()([])
    with pytest.raises(TypeError, match="x must be a dict"):
        MultimodalCollate()([_s(torch.zeros(2))])


def test_numpy_values_are_accepted():
    x, _, _ = MultimodalCollate()([_s({"a": np.ones(3)}), _s({"a": np.zeros(3)})])
    assert x["a"].dtype == torch.float32


def test_infer_specs_detects_variable_axes():
    specs = infer_specs([{"t": torch.ones(2, 5), "f": torch.ones(3)}, {"t": torch.ones(2, 7), "f": torch.ones(3)}])
    assert specs["t"].variable and specs["t"].shape == (2, None)
    assert not specs["f"].variable
    with pytest.raises(ValueError, match="incompatible"):
        infer_specs([{"t": torch.ones(2, 5)}, {"t": torch.ones(3, 5)}])


def _rowwise_reference(xs, name, pad=0):
    vals = [x[name] for x in xs]
    real = [v for v in vals if v is not None]
    longest = max(v.shape[-1] for v in real)
    out = torch.full((len(vals), *real[0].shape[:-1], longest), pad, dtype=real[0].dtype)
    for i, v in enumerate(vals):
        if v is not None:
            out[i, ..., : v.shape[-1]] = v
    return out


def test_vectorised_collate_equals_the_row_by_row_result():
    import torch

    from avalanche_mm.data.collate import MultimodalCollate

    g = torch.Generator().manual_seed(0)
    xs = [{"image": torch.randn(3, 4, 4, generator=g),
           "audio": torch.randn(2, int(torch.randint(3, 9, (1,), generator=g)), generator=g),
           "text": None if i == 2 else torch.randint(1, 50, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g)}
          for i in range(6)]
    batch = MultimodalCollate().collate_x(xs)
    assert torch.equal(batch["image"], torch.stack([x["image"] for x in xs]))
    assert torch.equal(batch["audio"], _rowwise_reference(xs, "audio"))
    assert torch.equal(batch["text"], _rowwise_reference(xs, "text"))
    assert batch.lengths["text"].tolist() == [0 if x["text"] is None else len(x["text"]) for x in xs]
    assert batch.present["text"].tolist() == [True, True, False, True, True, True]


def test_check_finite_names_the_sample_and_the_modality():
    import pytest
    import torch

    from avalanche_mm.data.collate import MultimodalCollate, NonFiniteValueError

    xs = [({"image": torch.zeros(2), "audio": torch.zeros(3)}, 0, 0) for _ in range(4)]
    xs[2][0]["audio"][1] = float("nan")
    MultimodalCollate()(xs)  # off by default
    with pytest.raises(NonFiniteValueError, match=r"sample 2 of the batch, modality 'audio': 1 NaN"):
        MultimodalCollate(check_finite=True)(xs)
    xs[2][0]["audio"][1] = 0.0
    xs[3][0]["image"][0] = float("inf")
    with pytest.raises(NonFiniteValueError, match=r"sample 3 of the batch, modality 'image': 1 Inf"):
        MultimodalCollate(check_finite=True)(xs)
