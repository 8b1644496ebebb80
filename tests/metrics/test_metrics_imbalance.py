"""Known answers and invariances of the modality-imbalance math."""

import itertools
import math
import random

import pytest
import torch

from avalanche_mm.data import MultimodalBatch
from avalanche_mm.metrics.functional import (
    accuracy,
    all_subsets,
    imbalance_index,
    modality_contributions,
    ogm_ge_coefficients,
    ogm_ge_ratios,
    ogm_ge_scores,
    per_modality_forgetting,
    shapley_values,
)


def test_shapley_two_modalities_known_answer():
    v = {(): 0.1, ("a",): 0.6, ("b",): 0.1, ("a", "b"): 0.7}
    phi = shapley_values(v)
    # phi_a = 1/2 (0.6 - 0.1) + 1/2 (0.7 - 0.1); phi_b = 1/2 (0.1 - 0.1) + 1/2 (0.7 - 0.6)
    assert phi["a"] == pytest.approx(0.55)
    assert phi["b"] == pytest.approx(0.05)


def test_shapley_glove_game_three_players():
    # v(S) = 1 iff S holds a and (b or c): the textbook answer is a = 2/3, b = c = 1/6
    v = {s: float("a" in s and ("b" in s or "c" in s)) for s in all_subsets(["a", "b", "c"])}
    phi = shapley_values(v, ["a", "b", "c"])
    assert phi == pytest.approx({"a": 2 / 3, "b": 1 / 6, "c": 1 / 6})


def _random_game(mods, seed):
    rng = random.Random(seed)
    return {s: rng.random() for s in all_subsets(mods)}


def test_shapley_axioms_on_a_random_four_modality_game():
    mods = ["image", "text", "audio", "video"]
    v = _random_game(mods, 3)
    phi = shapley_values(v, mods)
    # efficiency
    assert sum(phi.values()) == pytest.approx(v[frozenset(mods)] - v[frozenset()])
    # null player: make "video" irrelevant
    v_null = {s: v[s - {"video"}] for s in v}
    assert shapley_values(v_null, mods)["video"] == pytest.approx(0.0, abs=1e-12)
    # relabelling modalities permutes the values
    rename = dict(zip(mods, ["x1", "x2", "x3", "x4"]))
    v_renamed = {frozenset(rename[m] for m in s): val for s, val in v.items()}
    phi_renamed = shapley_values(v_renamed)
    for m in mods:
        assert phi_renamed[rename[m]] == pytest.approx(phi[m])


def test_shapley_symmetric_players_get_equal_values_and_scaling_is_linear():
    mods = ["a", "b", "c"]
    v = {s: float(len(s) ** 2) for s in all_subsets(mods)}
    phi = shapley_values(v, mods)
    assert phi["a"] == pytest.approx(phi["b"]) == pytest.approx(phi["c"]) == pytest.approx(3.0)
    phi10 = shapley_values({s: 10 * x for s, x in v.items()}, mods)
    assert phi10["a"] == pytest.approx(30.0)


def test_shapley_input_errors():
    with pytest.raises(ValueError, match="missing"):
        shapley_values({(): 0.0, ("a",): 1.0, ("a", "b"): 1.0}, ["a", "b"])
    with pytest.raises(TypeError, match="string"):
        shapley_values({"a": 1.0, (): 0.0})


def test_contributions_known_answer():
    c = modality_contributions(0.8, {"image": 0.3, "text": 0.85})
    assert c == pytest.approx({"image": 0.5, "text": -0.05})


def test_ogm_ge_scores_ratios_and_coefficients_known_answer():
    y = torch.tensor([0])
    logits = {"a": torch.tensor([[0.0, 0.0]]), "b": torch.tensor([[math.log(3.0), 0.0]])}
    s = ogm_ge_scores(logits, y)
    assert s == pytest.approx({"a": 0.5, "b": 0.75})
    rho = ogm_ge_ratios(s)
    assert rho == pytest.approx({"a": 2 / 3, "b": 1.5})
    k = ogm_ge_coefficients(rho, alpha=1.0)
    assert k == pytest.approx({"a": 1.0, "b": 1.0 - math.tanh(0.5)})
    three = ogm_ge_ratios({"a": 1.0, "b": 2.0, "c": 3.0})
    assert three == pytest.approx({"a": 0.4, "b": 1.0, "c": 2.0})


def test_ogm_ge_errors():
    with pytest.raises(ValueError, match="at least 2"):
        ogm_ge_ratios({"a": 1.0})
    with pytest.raises(ValueError, match=r"\[B, C\]"):
        ogm_ge_scores({"a": torch.zeros(3, 2)}, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="alpha"):
        ogm_ge_coefficients({"a": 2.0}, alpha=0)


@pytest.mark.parametrize(
    "scores, expected",
    [
        ({"a": 1.0, "b": 1.0}, 0.0),
        ({"a": 1.0, "b": 0.0}, 1.0),
        ({"a": 3.0, "b": 1.0}, 0.5),
        ({"a": 2.0, "b": 1.0, "c": 1.0}, 0.25),
        ({"a": 1.0, "b": -1.0}, 1.0),
        ([0.2, 0.2, 0.2, 0.2], 0.0),
    ],
)
def test_imbalance_index_known_answers(scores, expected):
    assert imbalance_index(scores) == pytest.approx(expected)


def test_imbalance_index_invariances_and_undefined_case():
    base = {"a": 0.3, "b": 0.1, "c": 0.05}
    ref = imbalance_index(base)
    assert imbalance_index({k: 7.0 * v for k, v in base.items()}) == pytest.approx(ref)
    for perm in itertools.permutations(base.values()):
        assert imbalance_index(list(perm)) == pytest.approx(ref)
    assert math.isnan(imbalance_index({"a": 0.0, "b": -0.2}))
    with pytest.raises(ValueError, match="at least 2"):
        imbalance_index({"a": 1.0})


def test_per_modality_forgetting():
    mats = {
        "image": [[0.9, 0.1], [0.5, 0.8]],
        "text": [[0.6, 0.2], [0.6, 0.7]],
    }
    assert per_modality_forgetting(mats) == pytest.approx({"image": 0.4, "text": 0.0})


class _LateFusion(torch.nn.Module):
    """Sum of per-modality linear heads, each masked by the presence mask."""

    def __init__(self, dims, n_classes):
        super().__init__()
        self.heads = torch.nn.ModuleDict({m: torch.nn.Linear(d, n_classes) for m, d in dims.items()})

    def forward(self, x):
        out = 0
        for m, head in self.heads.items():
            out = out + head(x[m]) * x.present[m].unsqueeze(1).float()
        return out


def _make_batch(n, centres, gen):
    y = torch.randint(0, 3, (n,), generator=gen)
    signal = centres[y] + 0.5 * torch.randn(n, 6, generator=gen)
    noise = torch.randn(n, 6, generator=gen)  # independent of y
    return MultimodalBatch({"signal": signal, "noise": noise}), y


def test_a_pure_noise_modality_gets_about_zero_contribution_and_shapley_value():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 6, generator=gen) * 2.0
    x_train, y_train = _make_batch(600, centres, gen)
    x_test, y_test = _make_batch(600, centres, gen)
    model = _LateFusion({"signal": 6, "noise": 6}, 3)
    # fit both heads jointly by least squares on one-hot targets (no iterative training)
    design = torch.cat([x_train["signal"], x_train["noise"], torch.ones(600, 1)], dim=1)
    coef = torch.linalg.lstsq(design, torch.nn.functional.one_hot(y_train, 3).float()).solution
    with torch.no_grad():
        model.heads["signal"].weight.copy_(coef[:6].T)
        model.heads["signal"].bias.copy_(coef[12])
        model.heads["noise"].weight.copy_(coef[6:12].T)
        model.heads["noise"].bias.zero_()
    with torch.no_grad():
        fused = accuracy(model(x_test), y_test)
        without = {m: accuracy(model(x_test.drop(m)), y_test) for m in ("signal", "noise")}
        values = {
            s: accuracy(model(x_test.keep(s)), y_test) for s in all_subsets(["signal", "noise"])
        }
    contrib = modality_contributions(fused, without)
    phi = shapley_values(values)
    assert fused > 0.85
    assert contrib["signal"] > 0.4 and phi["signal"] > 0.4
    assert abs(contrib["noise"]) < 0.03 and abs(phi["noise"]) < 0.03
    assert imbalance_index(phi) > 0.9


def test_accuracy_known_answer_and_shape_errors():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert accuracy(logits, torch.tensor([1, 0, 0])) == pytest.approx(2 / 3)
    assert accuracy(torch.tensor([1, 1]), torch.tensor([1, 0])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"\[B, C\]"):
        accuracy(torch.zeros(2, 3, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="batch size"):
        accuracy(logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="empty"):
        accuracy(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
