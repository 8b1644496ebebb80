import pytest
import torch

from avalanche_mm.data import ModalityTransform, make_multimodal_dataset, make_transform_groups


def test_per_modality_train_and_eval_groups_inside_avalanche():
    ds = make_multimodal_dataset(
        {"image": torch.ones(2, 1, 2, 2), "audio": torch.ones(2, 4)},
        [0, 1],
        train_transforms={"image": lambda t: t * 3},
        eval_transforms={"image": lambda t: t * 5},
    )
    x, y, t = ds.train()[0]
    assert isinstance(x, dict) and set(x) == {"image", "audio"}  # not corrupted into keys
    assert x["image"].max() == 3 and x["audio"].max() == 1
    assert ds.eval()[0][0]["image"].max() == 5
    assert (y, t) == (0, 0)


def test_missing_values_are_not_transformed():
    tf = ModalityTransform({"audio": lambda t: t + 1})
    assert tf({"audio": None})["audio"] is None


def test_validation():
    with pytest.raises(TypeError, match="mapping"):
        ModalityTransform([lambda t: t])
    with pytest.raises(TypeError, match="not callable"):
        ModalityTransform({"a": 3})
    with pytest.raises(KeyError, match="sample's modalities"):
        ModalityTransform({"video": abs})({"audio": torch.ones(1)})
    assert ModalityTransform({"video": abs}, strict=False)({"a": 1}) == {"a": 1}
    with pytest.raises(TypeError, match="must be a dict"):
        ModalityTransform({"a": abs})(torch.ones(1))


def test_make_transform_groups():
    tg = make_transform_groups(train={"a": lambda v: v + 1}, eval={"a": lambda v: v - 1})
    assert tg(([{"a": 1}, 0]))[0] == {"a": 2}
    assert tg(([{"a": 1}, 0]), group_name="eval")[0] == {"a": 0}
