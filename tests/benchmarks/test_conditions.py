"""Missing modalities, corruptions and modality-incremental schedules."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from avalanche_mm.benchmarks import (
    GaussianNoise,
    ShuffleModality,
    apply_modality_conditions,
    class_incremental_scenario,
    draw_missing_masks,
    modality_incremental_scenario,
    with_modality_schedule,
)
from avalanche_mm.data import make_multimodal_dataset

from mmbench_helpers import make_toy


def bench_of(n_per_class=20, **kw):
    train = make_toy(n_per_class=n_per_class)
    test = make_toy(n_per_class=4, offset=1000)
    return class_incremental_scenario(train, test, num_experiences=3, seed=0, **kw)


def missing_fraction(dataset, modality):
    return np.mean([dataset[i][0][modality] is None for i in range(len(dataset))])


def test_missing_rates_are_realised_per_experience_and_modality():
    bench = bench_of()
    out = apply_modality_conditions(
        bench, missing_rates={"audio": 0.3, "text": [0.0, 0.25, 0.5]}, seed=4
    )
    for e, exp in enumerate(out.train_stream):
        n = len(exp.dataset)
        assert missing_fraction(exp.dataset, "audio") == pytest.approx(round(0.3 * n) / n)
        assert missing_fraction(exp.dataset, "text") == pytest.approx(
            round([0.0, 0.25, 0.5][e] * n) / n
        )
        assert missing_fraction(exp.dataset, "image") == 0
        assert exp.missing_rates["text"] == [0.0, 0.25, 0.5][e]
        assert exp.class_names == bench.train_stream[e].class_names
    for exp in out.test_stream:  # only the train stream was asked for
        assert missing_fraction(exp.dataset, "audio") == 0


def test_missing_modalities_reach_the_batch_presence_mask():
    out = apply_modality_conditions(bench_of(), missing_rates={"audio": 0.5}, seed=0)
    data = out.train_stream[0].dataset.eval()
    x, y, t = next(iter(DataLoader(data, batch_size=len(data), collate_fn=data.collate_fn)))
    assert x.present["audio"].float().mean().item() == pytest.approx(0.5)
    assert x.present["image"].all()


def test_conditions_reproduce_by_seed_and_follow_samples_into_subsets():
    bench = bench_of()

    def pattern(b):
        d = b.train_stream[1].dataset
        return [d[i][0]["audio"] is None for i in range(len(d))]

    a = apply_modality_conditions(bench, missing_rates={"audio": 0.5}, seed=1)
    b = apply_modality_conditions(bench, missing_rates={"audio": 0.5}, seed=1)
    c = apply_modality_conditions(bench, missing_rates={"audio": 0.5}, seed=2)
    assert pattern(a) == pattern(b)
    assert pattern(a) != pattern(c)
    d = a.train_stream[1].dataset
    sub = d.subset([5, 2, 9]).concat(d.subset([0]))  # as a replay buffer would
    assert [sub[i][0]["audio"] is None for i in range(4)] == [pattern(a)[i] for i in (5, 2, 9, 0)]


def test_no_sample_loses_every_modality():
    bench = bench_of()
    out = apply_modality_conditions(
        bench, missing_rates={"image": 0.5, "audio": 0.5, "text": 0.9}, seed=0
    )
    for exp in out.train_stream:
        d = exp.dataset
        for i in range(len(d)):
            assert any(v is not None for v in d[i][0].values())
    with pytest.raises(ValueError, match="impossible"):
        apply_modality_conditions(
            bench, missing_rates={"image": 1.0, "audio": 1.0, "text": 1.0}, seed=0
        )


def test_draw_missing_masks_exact_counts():
    masks = draw_missing_masks(
        100, {"a": 0.5, "b": 0.5, "c": 1.0}, rng=np.random.default_rng(0),
        modalities=["a", "b", "c"],
    )
    assert {k: int(v.sum()) for k, v in masks.items()} == {"a": 50, "b": 50, "c": 100}
    assert not (masks["a"] & masks["b"] & masks["c"]).any()


def test_bad_condition_inputs_are_explained():
    bench = bench_of()
    with pytest.raises(KeyError, match="does not have"):
        apply_modality_conditions(bench, missing_rates={"video": 0.2})
    with pytest.raises(ValueError, match="one per experience"):
        apply_modality_conditions(bench, missing_rates={"audio": [0.1, 0.2]})
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        apply_modality_conditions(bench, missing_rates={"audio": 1.5})
    with pytest.raises(KeyError, match="streams"):
        apply_modality_conditions(bench, missing_rates={"audio": 0.1}, streams=("dev",))
    with pytest.raises(ValueError, match="nothing to apply"):
        apply_modality_conditions(bench)
    with pytest.raises(TypeError, match="Corruption"):
        apply_modality_conditions(bench, corruptions={"audio": 0.3})


def test_gaussian_noise_corrupts_exactly_the_rate_reproducibly():
    bench = bench_of()
    out = apply_modality_conditions(
        bench, corruptions={"audio": GaussianNoise(std=1.0, rate=0.25)}, seed=3
    )
    clean, noisy = bench.train_stream[0].dataset, out.train_stream[0].dataset
    changed = [
        not torch.equal(clean[i][0]["audio"], noisy[i][0]["audio"]) for i in range(len(clean))
    ]
    assert sum(changed) == round(0.25 * len(clean))
    again = out.train_stream[0].dataset
    assert all(torch.equal(noisy[i][0]["audio"], again[i][0]["audio"]) for i in range(5))
    with pytest.raises(TypeError, match="floating-point"):
        apply_modality_conditions(bench, corruptions={"text": GaussianNoise(std=1.0)})


def test_shuffle_modality_breaks_the_label_link():
    bench = bench_of()
    out = apply_modality_conditions(bench, corruptions={"image": ShuffleModality()}, seed=0)
    d = out.train_stream[0].dataset
    # image pixel (0, 0) holds the class; after shuffling it no longer matches y
    mismatched = np.mean([int(d[i][0]["image"][0, 0, 0]) != int(d[i][1]) for i in range(len(d))])
    assert mismatched > 0.3
    orig_ids = {int(bench.train_stream[0].dataset[i][0]["image"][0, 0, 1]) for i in range(len(d))}
    new_ids = {int(d[i][0]["image"][0, 0, 1]) for i in range(len(d))}
    assert new_ids <= orig_ids  # values come from the same experience


def test_conditions_keep_train_eval_transform_switching():
    n = 12
    data = make_multimodal_dataset(
        {"image": torch.zeros(n, 1, 2, 2), "audio": torch.zeros(n, 3)},
        [i % 3 for i in range(n)],
        train_transforms={"image": lambda v: v + 1.0},
        eval_transforms={"image": lambda v: v - 1.0},
    )
    bench = class_incremental_scenario(data, data, num_experiences=1, seed=0)
    out = apply_modality_conditions(bench, missing_rates={"audio": 0.5}, seed=0)
    d = out.train_stream[0].dataset
    assert float(d.train()[0][0]["image"].mean()) == 1.0
    assert float(d.eval()[0][0]["image"].mean()) == -1.0


def test_modality_schedule_and_modality_incremental_scenario():
    bench = bench_of()
    out = with_modality_schedule(
        bench, schedule=[["image"], ["image", "audio"], ["image", "audio", "text"]]
    )
    expected = [("image",), ("image", "audio"), ("image", "audio", "text")]
    for exp, mods in zip(out.train_stream, expected):
        assert exp.modalities == mods
        for m in ("image", "audio", "text"):
            assert missing_fraction(exp.dataset, m) == (0.0 if m in mods else 1.0)
    with pytest.raises(KeyError, match="not in the benchmark"):
        with_modality_schedule(bench, schedule=[["video"]] * 3)

    train, test = make_toy(n_per_class=9), make_toy(n_per_class=2, offset=1000)
    mi = modality_incremental_scenario(
        train, test, schedule=[["image"], ["image", "text"], ["audio", "text"]], seed=0
    )
    assert len(mi.train_stream) == 3 and len(mi.test_stream) == 1
    for exp in mi.train_stream:  # every class in every experience, new instances
        assert set(exp.classes_in_this_experience) == set(range(6))
    assert mi.train_stream[2].modalities == ("audio", "text")
    assert missing_fraction(mi.train_stream[2].dataset, "image") == 1.0
    assert missing_fraction(mi.test_stream[0].dataset, "image") == 0.0
