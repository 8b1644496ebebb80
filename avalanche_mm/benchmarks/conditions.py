"""Modality conditions applied to any scenario: missing modalities, corruptions,
and modality-incremental schedules.

All decisions are drawn once, when the condition is applied, from ``seed``
and the (stream, experience, modality) position, so they are reproducible
and stay attached to their samples when datasets are later subset or
concatenated (replay buffers). Missing rates are realised exactly: with rate
``r`` on an experience of ``n`` samples, ``round(r * n)`` samples lose the
modality. Corruptions run after the dataset's own transforms; a missing
modality is ``None`` (the collate marks it absent in ``batch.present``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from avalanche_mm.data import get_modality_specs

from ._datasets import map_samples
from .scenarios import (
    MultimodalScenario,
    _assemble,
    _check_class_names,
    _check_seed,
    _decorate,
    _modalities_of,
)

RateSpec = Union[float, Sequence[float]]


class Corruption:
    """Base class of per-modality corruptions.

    :param rate: fraction of the samples of an experience that are corrupted
        (exactly ``round(rate * n)`` of them).
    """

    def __init__(self, *, rate: float = 1.0):
        _check_rate("rate", rate)
        self.rate = float(rate)

    def __call__(self, value, *, generator: torch.Generator, partner):
        """Return the corrupted ``value``.

        :param value: the modality tensor of the sample (never None).
        :param generator: a per-sample seeded generator.
        :param partner: callable returning the same modality of another
            (seeded) sample of the experience, or None if it is missing there.
        """
        raise NotImplementedError


class GaussianNoise(Corruption):
    """Add ``N(0, std^2)`` noise to a floating-point modality.

    :param std: noise standard deviation (in the modality's units after its
        transforms).
    :param rate: fraction of samples corrupted.
    """

    def __init__(self, *, std: float, rate: float = 1.0):
        super().__init__(rate=rate)
        if not float(std) >= 0:
            raise ValueError(f"GaussianNoise: std must be >= 0, got {std!r}.")
        self.std = float(std)

    def __call__(self, value, *, generator, partner):
        if not torch.is_floating_point(value):
            raise TypeError(
                "GaussianNoise applies to floating-point modalities (image, audio, sensor); "
                f"got dtype {value.dtype}. Use ShuffleModality for token ids."
            )
        noise = torch.randn(value.shape, generator=generator, dtype=value.dtype)
        return value + self.std * noise

    def __repr__(self) -> str:
        return f"GaussianNoise(std={self.std}, rate={self.rate})"


class ShuffleModality(Corruption):
    """Replace the modality by the one of another random sample.

    The value keeps its distribution but loses its link to the label: a
    label-irrelevant modality (a controlled way to create modality
    imbalance). Works for every modality, token ids included.

    :param rate: fraction of samples corrupted.
    """

    def __call__(self, value, *, generator, partner):
        other = partner()
        return value if other is None else other

    def __repr__(self) -> str:
        return f"ShuffleModality(rate={self.rate})"


def _check_rate(what: str, rate) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating, np.integer)):
        raise TypeError(f"{what} must be a number in [0, 1], got {rate!r}.")
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {rate}.")


def _per_experience(value, n_exp: int, what: str) -> List[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != n_exp:
            raise ValueError(
                f"{what} has {len(value)} entries but the stream has {n_exp} experiences; "
                "give one value, or one per experience."
            )
        return list(value)
    return [value] * n_exp


def _stable_seed(*parts) -> int:
    return zlib.crc32("/".join(str(p) for p in parts).encode())


def draw_missing_masks(
    n: int,
    rates: Mapping[str, float],
    *,
    rng: np.random.Generator,
    ensure_one_present: bool = True,
    modalities: Sequence[str] = (),
) -> Dict[str, np.ndarray]:
    """Boolean masks (True = missing) with exactly ``round(rate * n)`` Trues.

    With ``ensure_one_present`` no sample loses every one of ``modalities``:
    modalities are placed by decreasing rate on the samples that miss the
    fewest so far (ties broken at random), which always succeeds when the
    rates allow it; otherwise a ``ValueError`` says the rates are impossible.

    :param n: number of samples.
    :param rates: modality -> missing rate.
    :param rng: the random generator.
    :param ensure_one_present: keep at least one modality in every sample.
    :param modalities: all modalities of the samples (default: ``rates``'s).
    """
    names = list(modalities) or list(rates)
    masks = {m: np.zeros(n, dtype=bool) for m in rates}
    missing_count = np.zeros(n, dtype=int)
    cap = len(names) - 1 if ensure_one_present else len(names)
    for m in sorted(rates, key=lambda k: -rates[k]):
        k = int(round(float(rates[m]) * n))
        if k == 0:
            continue
        eligible = np.flatnonzero(missing_count < cap)
        if len(eligible) < k:
            raise ValueError(
                f"missing rates {dict(rates)} are impossible with ensure_one_present=True: "
                f"'{m}' must be missing in {k} of {n} samples but only {len(eligible)} still "
                f"keep another modality (modalities: {names}). Lower the rates, or pass "
                "ensure_one_present=False."
            )
        keys = np.lexsort((rng.random(len(eligible)), missing_count[eligible]))
        chosen = eligible[keys[:k]]
        masks[m][chosen] = True
        missing_count[chosen] += 1
    return masks


@dataclass
class _Plan:
    missing: Dict[str, np.ndarray]
    corrupt: Dict[str, tuple]  # modality -> (Corruption, mask, partners)
    seed: int


def _plan_for(dataset, modalities, rates, corruptions, rng, ensure_one_present, seed):
    n = len(dataset)
    missing = draw_missing_masks(
        n,
        {m: r for m, r in rates.items() if r},
        rng=rng,
        ensure_one_present=ensure_one_present,
        modalities=modalities,
    )
    corrupt = {}
    for m, c in corruptions.items():
        if c is None:
            continue
        k = int(round(c.rate * n))
        mask = np.zeros(n, dtype=bool)
        mask[rng.permutation(n)[:k]] = True
        partners = rng.permutation(n)
        same = partners == np.arange(n)
        partners[same] = (partners[same] + 1) % max(n, 1)
        corrupt[m] = (c, mask, partners)
    return _Plan(missing=missing, corrupt=corrupt, seed=seed)


def _make_fn(plan: _Plan):
    def fn(element, index, read):
        x = dict(element[0])
        for m, (corruption, mask, partners) in plan.corrupt.items():
            if mask[index] and x.get(m) is not None:
                g = torch.Generator().manual_seed(_stable_seed(plan.seed, m, index))

                def partner(_m=m, _j=int(partners[index])):
                    return read(_j)[0].get(_m)

                x[m] = corruption(x[m], generator=g, partner=partner)
        for m, mask in plan.missing.items():
            if mask[index]:
                x[m] = None
        element[0] = x
        return element

    return fn


def apply_modality_conditions(
    benchmark: MultimodalScenario,
    *,
    missing_rates: Optional[Mapping[str, RateSpec]] = None,
    corruptions: Optional[Mapping[str, Union[Corruption, Sequence[Optional[Corruption]]]]] = None,
    streams: Sequence[str] = ("train",),
    seed: int = 0,
    ensure_one_present: bool = True,
) -> MultimodalScenario:
    """Apply per-experience, per-modality missing rates and corruptions.

    Call it once per set of streams to use different conditions for training
    and test (e.g. ``streams=("test",)``).

    :param benchmark: a :class:`MultimodalScenario`.
    :param missing_rates: modality -> rate, or modality -> one rate per
        experience.
    :param corruptions: modality -> :class:`Corruption` (or one per
        experience, None for none).
    :param streams: names of the streams to change.
    :param seed: seed of every draw.
    :param ensure_one_present: never drop every modality of a sample.
    :return: a new scenario; untouched streams are shared with the input.
    """
    if not isinstance(benchmark, MultimodalScenario):
        raise TypeError(
            "apply_modality_conditions expects a MultimodalScenario (from the "
            f"avalanche_mm.benchmarks generators), got {type(benchmark).__name__}."
        )
    missing_rates = dict(missing_rates or {})
    corruptions = dict(corruptions or {})
    if not missing_rates and not corruptions:
        raise ValueError(
            "apply_modality_conditions: nothing to apply; give missing_rates= and/or corruptions=."
        )
    modalities = list(benchmark.modalities)
    for what, mapping in (("missing_rates", missing_rates), ("corruptions", corruptions)):
        unknown = sorted(set(mapping) - set(modalities))
        if unknown:
            raise KeyError(
                f"{what} names modalities {unknown} that the benchmark does not have "
                f"(it has {modalities})."
            )
    specs = _specs_of(benchmark)
    for m, c in corruptions.items():
        cs = c if isinstance(c, (list, tuple)) else [c]
        if any(isinstance(x, GaussianNoise) for x in cs) and m in specs:
            if not specs[m].dtype.is_floating_point:
                raise TypeError(
                    f"GaussianNoise applies to floating-point modalities; '{m}' holds "
                    f"{specs[m].dtype} values. Use ShuffleModality for token ids."
                )
    all_streams = benchmark.streams
    unknown_streams = sorted(set(streams) - set(all_streams))
    if unknown_streams:
        raise KeyError(
            f"streams {unknown_streams} are not in the benchmark (it has {sorted(all_streams)})."
        )
    new_streams = []
    for sname, stream in all_streams.items():
        if sname not in streams:
            new_streams.append(stream)
            continue
        exps = list(stream)
        n_exp = len(exps)
        rates_e = {
            m: _per_experience(r, n_exp, f"missing_rates['{m}']") for m, r in missing_rates.items()
        }
        corr_e = {
            m: _per_experience(c, n_exp, f"corruptions['{m}']") for m, c in corruptions.items()
        }
        for m, rs in rates_e.items():
            for r in rs:
                _check_rate(f"missing_rates['{m}']", r)
        for m, cs in corr_e.items():
            for c in cs:
                if c is not None and not isinstance(c, Corruption):
                    raise TypeError(
                        f"corruptions['{m}'] must be Corruption objects (GaussianNoise, "
                        f"ShuffleModality, ...), got {c!r}."
                    )
        datasets, extras = [], []
        for e, exp in enumerate(exps):
            exp_seed = _stable_seed(seed, sname, e)
            rng = np.random.default_rng(exp_seed)
            plan = _plan_for(
                exp.dataset,
                modalities,
                {m: float(rs[e]) for m, rs in rates_e.items()},
                {m: cs[e] for m, cs in corr_e.items()},
                rng,
                ensure_one_present,
                exp_seed,
            )
            datasets.append(map_samples(exp.dataset, _make_fn(plan)))
            extra = {k: v for k, v in vars(exp).items() if not k.startswith("_")}
            extra["missing_rates"] = {m: float(rs[e]) for m, rs in rates_e.items()}
            extra["corruptions"] = {m: cs[e] for m, cs in corr_e.items()}
            present = [
                m for m in getattr(exp, "modalities", modalities)
                if extra["missing_rates"].get(m, 0.0) < 1.0
            ]
            extra["modalities"] = tuple(present)
            extras.append(extra)
        timeline = hasattr(exps[0], "classes_in_this_experience")
        new_streams.append(_decorate(sname, datasets, extras, timeline=timeline))
    return benchmark.derive(new_streams)


def _specs_of(benchmark) -> Dict[str, Any]:
    stream = next(iter(benchmark.streams.values()))
    try:
        return get_modality_specs(stream[0].dataset)
    except TypeError:
        return {}


def with_modality_schedule(
    benchmark: MultimodalScenario,
    *,
    schedule: Sequence[Sequence[str]],
    streams: Sequence[str] = ("train",),
    seed: int = 0,
) -> MultimodalScenario:
    """Modality-incremental: experience ``i`` only has ``schedule[i]``.

    The other modalities are missing (``None``) in every sample of that
    experience of the given streams; ``experience.modalities`` lists what is
    available.

    :param benchmark: a :class:`MultimodalScenario`.
    :param schedule: one collection of modality names per experience.
    :param streams: the streams to restrict (default only ``train``, so
        evaluation sees every modality).
    :param seed: seed (kept for symmetry; full missingness draws nothing).
    """
    modalities = list(benchmark.modalities)
    schedule = [list(s) for s in schedule]
    for i, s in enumerate(schedule):
        if not s:
            raise ValueError(f"schedule[{i}] is empty; every experience needs a modality.")
        unknown = sorted(set(s) - set(modalities))
        if unknown:
            raise KeyError(
                f"schedule[{i}] names modalities {unknown} not in the benchmark ({modalities})."
            )
    rates = {m: [0.0 if m in s else 1.0 for s in schedule] for m in modalities}
    rates = {m: r for m, r in rates.items() if any(r)}
    if not rates:
        return benchmark
    return apply_modality_conditions(
        benchmark, missing_rates=rates, streams=streams, seed=seed, ensure_one_present=True
    )


def modality_incremental_scenario(
    train_dataset,
    test_dataset,
    *,
    schedule: Sequence[Sequence[str]],
    seed: int = 0,
    class_names: Optional[Sequence[str]] = None,
    validation_size: float = 0.0,
    name: Optional[str] = None,
) -> MultimodalScenario:
    """Modality-incremental scenario: same classes, new modalities over time.

    The training data is split into ``len(schedule)`` class-balanced,
    disjoint experiences (new instances of every class); experience ``i``
    carries only the modalities ``schedule[i]``. The test stream is one
    experience with every modality.

    :param train_dataset: task-aware multimodal training dataset.
    :param test_dataset: task-aware multimodal test dataset.
    :param schedule: the available modalities per experience, e.g.
        ``[["image"], ["image", "audio"], ["image", "audio", "text"]]``.
    :param seed: seed of the instance split.
    :param class_names: names indexed by class id.
    :param validation_size: fraction of each class moved to ``valid``.
    :param name: ``experience.dataset_name``.
    """
    seed = _check_seed(seed)
    n_exp = len(schedule)
    if n_exp < 1:
        raise ValueError("modality_incremental_scenario: the schedule is empty.")
    rng = np.random.default_rng(seed)
    parts: List[List[int]] = [[] for _ in range(n_exp)]
    for c in sorted(train_dataset.targets.uniques):
        idx = np.array(train_dataset.targets.val_to_idx[c])
        if len(idx) < n_exp:
            raise ValueError(
                f"modality_incremental_scenario: class {c} has {len(idx)} training samples, "
                f"fewer than the {n_exp} experiences; every experience needs every class."
            )
        idx = idx[rng.permutation(len(idx))]
        for e, chunk in enumerate(np.array_split(idx, n_exp)):
            parts[e].extend(chunk.tolist())
    classes = sorted(int(c) for c in train_dataset.targets.uniques)
    class_names = _check_class_names(class_names, classes, "modality_incremental_scenario")
    bench = _assemble(
        [train_dataset.subset(sorted(p)) for p in parts],
        [test_dataset],
        class_names=class_names,
        seed=seed,
        validation_size=validation_size,
        extra={"dataset_name": name},
        modalities=_modalities_of(train_dataset),
        dataset_names=[name] if name else [],
        info={"schedule": [list(s) for s in schedule], "seed": seed},
    )
    target_streams = ("train", "valid") if validation_size else ("train",)
    return with_modality_schedule(bench, schedule=schedule, streams=target_streams, seed=seed)


__all__ = [
    "Corruption",
    "GaussianNoise",
    "ShuffleModality",
    "draw_missing_masks",
    "apply_modality_conditions",
    "with_modality_schedule",
    "modality_incremental_scenario",
]
