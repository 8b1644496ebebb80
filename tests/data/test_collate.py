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
