"""Registry entries of the built-in (offline) benchmarks: world, digits, demo and toy.

World entries take the world's parameters (``world_seed``, ``image_size``,
``shapes``, ``colours``, ``textures``, ``sizes``, ``num_domains``, ``noise``,
``modality_attributes``, ``audio_format``) next to the benchmark's own. The
demo benchmarks (``demo-mtil``, ``demo-av``) and ``toy`` are world benchmarks
too; ``demo-mtil`` carries a reference split of objects outside its tasks.

Parameters are declared once, in each factory's signature: ranges through
``Annotated[int, Range(ge=1)]``, choices through ``Literal``. A ``check``
adds the cheap consistency checks (classes that do not split evenly).
"""

from __future__ import annotations

from typing import Annotated, Any, Dict, List, Literal, Mapping, Optional, Sequence

from avalanche_mm.registry import Range

from .bundle import BenchmarkBundle, ReferenceSet
from .digits import digits_class_incremental
from .registry import register_benchmark
from .world import ProceduralWorld

Count = Annotated[int, Range(ge=1)]
Fraction = Annotated[float, Range(ge=0.0, lt=1.0)]


#: help text of the parameters the world benchmarks share (appended to their docstrings)
_PARAM_DOCS = {
    "num_classes": "number of object classes.",
    "num_experiences": "number of experiences (must divide num_classes).",
    "train_per_class": "training samples per class.",
    "test_per_class": "test samples per class.",
    "modalities": "the modalities of the samples (image, text, audio).",
    "seed": "seed of classes, order and sampling (default: the run's seed).",
    "task_labels": "task-incremental variant (task label = experience index).",
    "validation_size": "fraction of each class held out in a valid stream.",
    "missing_rates": "modality -> probability that a training sample lacks it.",
    "test_missing_rates": "modality -> probability that a test sample lacks it.",
    "world_seed": "seed of the world (its objects, renderings and vocabulary).",
    "image_size": "side of the rendered images (a CLIP run sets it to the backbone's).",
    "shapes": "number of shapes of the world (or their names).",
    "colours": "number of colours of the world (or their names).",
    "textures": "number of textures of the world (or their names).",
    "sizes": "number of sizes of the world (or their names).",
    "num_domains": "number of rendering styles / vocabularies.",
    "noise": "modality -> noise level in [0, 1] (a weak modality).",
    "modality_attributes": "modality -> the attributes it shows (hides the others).",
    "audio_format": "spectrogram or waveform.",
    "label_space": "global (one label space over the tasks) or local targets.",
    "num_phases": "number of retrieval phases.",
    "pairs_per_combination": "training image-caption pairs per attribute combination.",
    "test_pairs_per_combination": "test pairs per attribute combination.",
    "schedule": "the modalities present in each experience.",
    "caption_noise": "probability that a caption names a random digit.",
}


def _documented(factory):
    """Append ``:param:`` lines of :data:`_PARAM_DOCS` for the factory's parameters it does not document."""
    import inspect

    doc = factory.__doc__ or ""
    lines = [f"    :param {n}: {_PARAM_DOCS[n]}" for n in inspect.signature(factory).parameters
             if n in _PARAM_DOCS and f":param {n}:" not in doc]
    if lines:
        factory.__doc__ = doc.rstrip() + "\n\n" + "\n".join(lines) + "\n"
    return factory


def _even_split(n_classes_key: Optional[str], n_classes_default: int, k_key: str = "num_experiences", k_default: int = 5):
    """A check: the number of experiences must divide the number of classes."""

    def check(params: Mapping[str, Any]) -> List[str]:
        n = params.get(n_classes_key, n_classes_default) if n_classes_key else n_classes_default
        k = params.get(k_key, k_default)
        if not isinstance(n, int) or not isinstance(k, int) or k < 1 or n < 1:
            return []
        if k > n:
            return [f"{k_key}: got {k}, expected at most {n} (one class per experience at least)"]
        if n % k:
            divisors = [d for d in range(1, n + 1) if n % d == 0]
            return [
                f"{k_key}: got {k}, but {n} classes do not split evenly into {k} experiences; "
                f"expected one of {divisors}"
            ]
        return []

    return check


def _world(
    world_seed, image_size, shapes, colours, textures, sizes, num_domains, noise,
    modality_attributes, audio_format,
) -> ProceduralWorld:
    return ProceduralWorld(
        seed=world_seed,
        image_size=image_size,
        shapes=shapes,
        colours=colours,
        textures=textures,
        sizes=sizes,
        num_domains=num_domains,
        noise=noise,
        modality_attributes=modality_attributes,
        audio_format=audio_format,
    )


@register_benchmark("world-class-incremental", check=_even_split("num_classes", 10))
@_documented
def world_class_incremental(
    *,
    num_classes: Count = 10,
    num_experiences: Count = 5,
    train_per_class: Count = 50,
    test_per_class: Count = 20,
    modalities: Sequence[str] = ("image", "text", "audio"),
    seed: Annotated[int, Range(ge=0)] = 0,
    task_labels: bool = False,
    validation_size: Fraction = 0.0,
    missing_rates: Optional[Mapping] = None,
    test_missing_rates: Optional[Mapping] = None,
    world_seed: Annotated[int, Range(ge=0)] = 0,
    image_size: Annotated[int, Range(ge=8)] = 32,
    shapes=6,
    colours=6,
    textures=4,
    sizes=2,
    num_domains: int = 1,
    noise: Optional[Mapping[str, float]] = None,
    modality_attributes: Optional[Mapping[str, Sequence[str]]] = None,
    audio_format: Literal["spectrogram", "waveform"] = "spectrogram",
):
    """Procedural world, class-incremental over held-out attribute combinations."""
    world = _world(world_seed, image_size, shapes, colours, textures, sizes, num_domains,
                   noise, modality_attributes, audio_format)
    return world.class_incremental_benchmark(
        num_classes=num_classes, num_experiences=num_experiences,
        train_per_class=train_per_class, test_per_class=test_per_class,
        modalities=tuple(modalities), seed=seed, task_labels=task_labels,
        validation_size=validation_size, missing_rates=missing_rates,
        test_missing_rates=test_missing_rates,
    )


@register_benchmark("world-task-incremental", check=_even_split("num_classes", 10))
@_documented
def world_task_incremental(
    *,
    num_classes: Count = 10,
    num_experiences: Count = 5,
    train_per_class: Count = 50,
    test_per_class: Count = 20,
    modalities: Sequence[str] = ("image", "text", "audio"),
    seed: Annotated[int, Range(ge=0)] = 0,
    validation_size: Fraction = 0.0,
    world_seed: Annotated[int, Range(ge=0)] = 0,
    image_size: Annotated[int, Range(ge=8)] = 32,
    num_domains: int = 1,
    noise: Optional[Mapping[str, float]] = None,
    audio_format: Literal["spectrogram", "waveform"] = "spectrogram",
):
    """Procedural world, task-incremental (task label = experience index)."""
    world = _world(world_seed, image_size, 6, 6, 4, 2, num_domains, noise, None, audio_format)
    return world.class_incremental_benchmark(
        num_classes=num_classes, num_experiences=num_experiences,
        train_per_class=train_per_class, test_per_class=test_per_class,
        modalities=tuple(modalities), seed=seed, task_labels=True,
        validation_size=validation_size,
    )


@register_benchmark("world-domain-incremental")
@_documented
def world_domain_incremental(
    *,
    num_classes: Count = 10,
    num_domains: Count = 4,
    train_per_class: Count = 40,
    test_per_class: Count = 20,
    modalities: Sequence[str] = ("image", "text", "audio"),
    seed: Annotated[int, Range(ge=0)] = 0,
    validation_size: Fraction = 0.0,
    world_seed: Annotated[int, Range(ge=0)] = 0,
    image_size: Annotated[int, Range(ge=8)] = 32,
    noise: Optional[Mapping[str, float]] = None,
    audio_format: Literal["spectrogram", "waveform"] = "spectrogram",
):
    """Procedural world, domain-incremental (rendering style and vocabulary shift)."""
    world = _world(world_seed, image_size, 6, 6, 4, 2, num_domains, noise, None, audio_format)
    return world.domain_incremental_benchmark(
        num_classes=num_classes, train_per_class=train_per_class,
        test_per_class=test_per_class, modalities=tuple(modalities), seed=seed,
        validation_size=validation_size,
    )


@register_benchmark("world-mtil")
@_documented
def world_mtil(
    *,
    train_per_class: Count = 40,
    test_per_class: Count = 20,
    modalities: Sequence[str] = ("image",),
    seed: Annotated[int, Range(ge=0)] = 0,
    label_space: Literal["global", "local"] = "global",
    num_domains: Count = 2,
    world_seed: Annotated[int, Range(ge=0)] = 0,
    image_size: Annotated[int, Range(ge=8)] = 32,
    noise: Optional[Mapping[str, float]] = None,
):
    """Procedural world, MTIL-style: shapes, colours, textures, objects (+ a new domain)."""
    world = _world(world_seed, image_size, 6, 6, 4, 2, num_domains, noise, None, "spectrogram")
    return world.mtil_benchmark(
        train_per_class=train_per_class, test_per_class=test_per_class,
        modalities=tuple(modalities), seed=seed, label_space=label_space,
    )


@register_benchmark("world-retrieval")
@_documented
def world_retrieval(
    *,
    num_phases: Count = 5,
    pairs_per_combination: Count = 10,
    test_pairs_per_combination: Count = 4,
    seed: Annotated[int, Range(ge=0)] = 0,
    world_seed: Annotated[int, Range(ge=0)] = 0,
    image_size: Annotated[int, Range(ge=8)] = 32,
):
    """Procedural world, instance-incremental image-caption pairs (retrieval phases)."""
    world = _world(world_seed, image_size, 6, 6, 4, 2, 1, None, None, "spectrogram")
    return world.retrieval_benchmark(
        num_phases=num_phases, pairs_per_combination=pairs_per_combination,
        test_pairs_per_combination=test_pairs_per_combination, seed=seed,
    )


@register_benchmark("world-modality-incremental")
@_documented
def world_modality_incremental(
    *,
    schedule: Sequence[Sequence[str]] = (("image",), ("image", "audio"), ("image", "audio", "text")),
    num_classes: Count = 10,
    train_per_class: Count = 60,
    test_per_class: Count = 20,
    seed: Annotated[int, Range(ge=0)] = 0,
    world_seed: Annotated[int, Range(ge=0)] = 0,
    image_size: Annotated[int, Range(ge=8)] = 32,
    noise: Optional[Mapping[str, float]] = None,
):
    """Procedural world, modality-incremental (modalities join in later experiences)."""
    world = _world(world_seed, image_size, 6, 6, 4, 2, 1, noise, None, "spectrogram")
    return world.modality_incremental_benchmark(
        schedule=schedule, num_classes=num_classes, train_per_class=train_per_class,
        test_per_class=test_per_class, seed=seed,
    )


@register_benchmark("digits-class-incremental", check=_even_split(None, 10))
@_documented
def digits(
    *,
    num_experiences: Count = 5,
    seed: Annotated[int, Range(ge=0)] = 0,
    modalities: Sequence[str] = ("image", "text", "audio"),
    caption_noise: Annotated[float, Range(ge=0.0, le=1.0)] = 0.0,
    audio_format: Literal["spectrogram", "waveform"] = "spectrogram",
    task_labels: bool = False,
    validation_size: Fraction = 0.0,
):
    """Real scikit-learn 8x8 digits with captions and sonified audio, class-incremental."""
    return digits_class_incremental(
        num_experiences=num_experiences, seed=seed, modalities=tuple(modalities),
        caption_noise=caption_noise, audio_format=audio_format, task_labels=task_labels,
        validation_size=validation_size,
    )


# ---------------------------------------------------------------------------
# the demo benchmarks (they carry a reference split)
# ---------------------------------------------------------------------------
def _make_world(params: Mapping[str, Any]) -> ProceduralWorld:
    return ProceduralWorld(**dict(params))


def _world_reference(world: ProceduralWorld, per_combination: int, world_params: Mapping[str, Any]) -> ReferenceSet:
    samples = world.reference_samples(per_combination=per_combination, modalities=("image", "text"))
    return ReferenceSet(
        images=samples.modalities["image"].float(),
        texts=list(samples.captions),
        fingerprint={"world": dict(world_params), "per_combination": per_combination},
    )


@register_benchmark("demo-mtil", reference=True)
def demo_mtil(
    *,
    world: Optional[Dict[str, Any]] = None,
    tasks: Optional[List[Dict[str, Any]]] = None,
    train_per_class: Count = 40,
    test_per_class: Count = 20,
    reference_per_combination: Count = 20,
    seed: Annotated[int, Range(ge=0)] = 0,
) -> BenchmarkBundle:
    """MTIL-style sequence of procedural-world "datasets" with a reference split.

    :param world: keyword arguments of :class:`~avalanche_mm.benchmarks.world.ProceduralWorld`.
    :param tasks: the datasets, as ``WorldTask`` keyword dicts (default: the world's
        four default datasets: shapes, colours, textures, objects).
    :param train_per_class: training samples per class.
    :param test_per_class: test samples per class.
    :param reference_per_combination: reference (pretraining) pairs per object.
    :param seed: seed of the sequence.
    """
    from .world import WorldTask

    wp = dict(world or {})
    w = _make_world(wp)
    task_objs = None if tasks is None else [WorldTask(**dict(t)) for t in tasks]
    scenario = w.mtil_benchmark(
        tasks=task_objs,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        modalities=("image",),
        seed=seed,
    )
    return BenchmarkBundle(
        name="demo-mtil",
        scenario=scenario,
        class_names=list(scenario.class_names),
        reference=_world_reference(w, reference_per_combination, wp),
        modalities=("image",),
        description="MTIL-style sequence of procedural-world datasets ("
        + ", ".join(scenario.dataset_names)
        + "), each with its own class names; a reference split of other objects for pretraining",
    )


@register_benchmark("demo-av", check=_even_split("num_classes", 8, k_default=4))
def demo_av(
    *,
    world: Optional[Dict[str, Any]] = None,
    num_classes: Count = 8,
    num_experiences: Count = 4,
    train_per_class: Count = 40,
    test_per_class: Count = 20,
    modalities: Sequence[str] = ("image", "audio"),
    seed: Annotated[int, Range(ge=0)] = 0,
    validation_size: Annotated[float, Range(ge=0.0, lt=1.0)] = 0.0,
    features: Optional[Dict[str, Any]] = None,
) -> BenchmarkBundle:
    """Audio-visual-style class-incremental stream of the procedural world.

    Imbalance is set through ``world`` (e.g. ``noise: {image: 0.8}`` makes the
    image modality weak, ``modality_attributes`` hides attributes from one).
    With ``features`` the samples are frozen pre-extracted features (AV-CIL's regime):
    image -> visual tokens ``[T, S, Dv]`` (T = ``frames`` renderings), audio -> ``[Da]``,
    from encoders pretrained on the world's reference objects (disjoint from the stream's
    classes) and then frozen (:mod:`avalanche_mm.benchmarks.world_features`).

    :param world: keyword arguments of :class:`~avalanche_mm.benchmarks.world.ProceduralWorld`.
    :param num_classes: number of object classes.
    :param num_experiences: number of experiences.
    :param train_per_class: training samples per class.
    :param test_per_class: test samples per class.
    :param modalities: the modalities of the samples.
    :param seed: seed of classes and order.
    :param validation_size: fraction of each class's training samples moved to a ``valid``
        stream (0: none).
    :param features: pre-extract frozen features (None: raw samples); a mapping (``{}`` for the
        defaults) of ``per_combination`` (reference samples per object, 10), ``epochs`` (10),
        ``batch_size`` (64), ``lr`` (3e-3), ``token_dim`` (Dv, 32), ``audio_dim`` (Da, 32),
        ``conv_channels`` ([16]), ``frames`` (T, visual frames per sample: independent renderings
        of its object, 1) and ``seed`` (0) of the pretraining.
    """
    wp = dict(world or {})
    w = _make_world(wp)
    encode, frames = None, 1
    if features is not None:
        from .world_features import world_feature_extractor

        bad = [m for m in modalities if m not in ("image", "audio")]
        if bad:
            raise ValueError(f"demo-av: features need modalities among ['image', 'audio'], got {list(modalities)}.")
        encode = world_feature_extractor(wp, tuple(modalities), features)
        frames = encode.settings["frames"] if "image" in modalities else 1
    scenario = w.class_incremental_benchmark(
        num_classes=num_classes,
        num_experiences=num_experiences,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        modalities=tuple(modalities),
        seed=seed,
        validation_size=validation_size,
        encode=encode,
        image_frames=frames,
    )
    return BenchmarkBundle(
        name="demo-av",
        scenario=scenario,
        class_names=list(scenario.class_names or []),
        reference=None,
        modalities=tuple(modalities),
        description=f"class-incremental {'+'.join(modalities)} stream of the procedural world "
        f"({num_classes} objects in {num_experiences} experiences); world settings {wp}"
        + ("" if encode is None else "; frozen features pretrained on the world's reference objects"),
    )


@register_benchmark("toy", check=_even_split("n_classes", 4, "n_experiences", 2))
def toy(
    *,
    n_experiences: Count = 2,
    n_classes: Count = 4,
    n_per_class: Count = 24,
    seed: Annotated[int, Range(ge=0)] = 0,
    missing_audio_rate: Annotated[float, Range(ge=0.0, le=1.0)] = 0.0,
) -> BenchmarkBundle:
    """The tiny toy stream (image + text + audio) of :mod:`avalanche_mm.benchmarks.toy`.

    :param n_experiences: number of experiences.
    :param n_classes: number of classes.
    :param n_per_class: samples per class.
    :param seed: seed of the stream.
    :param missing_audio_rate: probability that a sample's audio is missing.
    """
    from .toy import toy_benchmark

    bm = toy_benchmark(
        n_experiences=n_experiences, n_classes=n_classes, n_per_class=n_per_class, seed=seed,
        missing_audio_rate=missing_audio_rate,
    )
    return BenchmarkBundle(
        name="toy",
        scenario=bm,
        class_names=list(bm.class_names),
        modalities=("image", "text", "audio"),
        description="toy colour/tone stream",
    )


__all__ = [
    "demo_mtil",
    "demo_av",
    "toy",
    "world_class_incremental",
    "world_task_incremental",
    "world_domain_incremental",
    "world_mtil",
    "world_retrieval",
    "world_modality_incremental",
    "digits",
]
