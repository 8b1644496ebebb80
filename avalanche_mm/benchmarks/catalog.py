"""Registry entries of the built-in (offline) benchmarks: world and digits.

World entries take the world's parameters (``world_seed``, ``image_size``,
``shapes``, ``colours``, ``textures``, ``sizes``, ``num_domains``, ``noise``,
``modality_attributes``, ``audio_format``) next to the benchmark's own.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

from .digits import digits_class_incremental
from .registry import register_benchmark
from .world import ProceduralWorld


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


@register_benchmark("world-class-incremental")
def world_class_incremental(
    *,
    num_classes: int = 10,
    num_experiences: int = 5,
    train_per_class: int = 50,
    test_per_class: int = 20,
    modalities: Sequence[str] = ("image", "text", "audio"),
    seed: int = 0,
    task_labels: bool = False,
    validation_size: float = 0.0,
    missing_rates: Optional[Mapping] = None,
    test_missing_rates: Optional[Mapping] = None,
    world_seed: int = 0,
    image_size: int = 32,
    shapes=6,
    colours=6,
    textures=4,
    sizes=2,
    num_domains: int = 1,
    noise: Optional[Mapping[str, float]] = None,
    modality_attributes: Optional[Mapping[str, Sequence[str]]] = None,
    audio_format: str = "spectrogram",
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


@register_benchmark("world-task-incremental")
def world_task_incremental(
    *,
    num_classes: int = 10,
    num_experiences: int = 5,
    train_per_class: int = 50,
    test_per_class: int = 20,
    modalities: Sequence[str] = ("image", "text", "audio"),
    seed: int = 0,
    validation_size: float = 0.0,
    world_seed: int = 0,
    image_size: int = 32,
    num_domains: int = 1,
    noise: Optional[Mapping[str, float]] = None,
    audio_format: str = "spectrogram",
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
def world_domain_incremental(
    *,
    num_classes: int = 10,
    num_domains: int = 4,
    train_per_class: int = 40,
    test_per_class: int = 20,
    modalities: Sequence[str] = ("image", "text", "audio"),
    seed: int = 0,
    validation_size: float = 0.0,
    world_seed: int = 0,
    image_size: int = 32,
    noise: Optional[Mapping[str, float]] = None,
    audio_format: str = "spectrogram",
):
    """Procedural world, domain-incremental (rendering style and vocabulary shift)."""
    world = _world(world_seed, image_size, 6, 6, 4, 2, num_domains, noise, None, audio_format)
    return world.domain_incremental_benchmark(
        num_classes=num_classes, train_per_class=train_per_class,
        test_per_class=test_per_class, modalities=tuple(modalities), seed=seed,
        validation_size=validation_size,
    )


@register_benchmark("world-mtil")
def world_mtil(
    *,
    train_per_class: int = 40,
    test_per_class: int = 20,
    modalities: Sequence[str] = ("image",),
    seed: int = 0,
    label_space: str = "global",
    num_domains: int = 2,
    world_seed: int = 0,
    image_size: int = 32,
    noise: Optional[Mapping[str, float]] = None,
):
    """Procedural world, MTIL-style: shapes, colours, textures, objects (+ a new domain)."""
    world = _world(world_seed, image_size, 6, 6, 4, 2, num_domains, noise, None, "spectrogram")
    return world.mtil_benchmark(
        train_per_class=train_per_class, test_per_class=test_per_class,
        modalities=tuple(modalities), seed=seed, label_space=label_space,
    )


@register_benchmark("world-retrieval")
def world_retrieval(
    *,
    num_phases: int = 5,
    pairs_per_combination: int = 10,
    test_pairs_per_combination: int = 4,
    seed: int = 0,
    world_seed: int = 0,
    image_size: int = 32,
):
    """Procedural world, instance-incremental image-caption pairs (retrieval phases)."""
    world = _world(world_seed, image_size, 6, 6, 4, 2, 1, None, None, "spectrogram")
    return world.retrieval_benchmark(
        num_phases=num_phases, pairs_per_combination=pairs_per_combination,
        test_pairs_per_combination=test_pairs_per_combination, seed=seed,
    )


@register_benchmark("world-modality-incremental")
def world_modality_incremental(
    *,
    schedule: Sequence[Sequence[str]] = (("image",), ("image", "audio"), ("image", "audio", "text")),
    num_classes: int = 10,
    train_per_class: int = 60,
    test_per_class: int = 20,
    seed: int = 0,
    world_seed: int = 0,
    image_size: int = 32,
    noise: Optional[Mapping[str, float]] = None,
):
    """Procedural world, modality-incremental (modalities join in later experiences)."""
    world = _world(world_seed, image_size, 6, 6, 4, 2, 1, noise, None, "spectrogram")
    return world.modality_incremental_benchmark(
        schedule=schedule, num_classes=num_classes, train_per_class=train_per_class,
        test_per_class=test_per_class, seed=seed,
    )


@register_benchmark("digits-class-incremental")
def digits(
    *,
    num_experiences: int = 5,
    seed: int = 0,
    modalities: Sequence[str] = ("image", "text", "audio"),
    caption_noise: float = 0.0,
    audio_format: str = "spectrogram",
    task_labels: bool = False,
    validation_size: float = 0.0,
):
    """Real scikit-learn 8x8 digits with captions and sonified audio, class-incremental."""
    return digits_class_incremental(
        num_experiences=num_experiences, seed=seed, modalities=tuple(modalities),
        caption_noise=caption_noise, audio_format=audio_format, task_labels=task_labels,
        validation_size=validation_size,
    )


__all__ = [
    "world_class_incremental",
    "world_task_incremental",
    "world_domain_incremental",
    "world_mtil",
    "world_retrieval",
    "world_modality_incremental",
    "digits",
]
