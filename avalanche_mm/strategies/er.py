"""Experience replay (ER): a buffer of past samples mixed into every minibatch.

Chaudhry et al. (2019) "On Tiny Episodic Memories in Continual Learning":
each training minibatch is concatenated with a minibatch drawn from a memory
of past samples; the memory is updated after each experience with a storage
policy. The logic is Avalanche's ``ReplayPlugin`` (our drop-in
:class:`~avalanche_mm.strategies.plugins.ReplayPlugin`, which handles
multimodal batches) with one of Avalanche's storage policies;
:class:`ER` is a :class:`~avalanche_mm.strategies.MultimodalSupervisedTemplate`
carrying it.
"""

from __future__ import annotations

from typing import Annotated, Any, List, Literal, Optional

from avalanche_mm.registry import Range
from avalanche_mm.strategies.plugins import ReplayPlugin
from avalanche_mm.strategies.registry import BuildContext, register_method
from avalanche_mm.strategies.twins import MultimodalSupervisedTemplate

#: storage policies by config name
STORAGE_POLICIES = ("experience_balanced", "class_balanced", "reservoir")


def make_storage_policy(name: str, mem_size: int):
    """The Avalanche storage policy ``name`` (one of :data:`STORAGE_POLICIES`) of ``mem_size`` samples."""
    from avalanche.training.storage_policy import (
        ClassBalancedBuffer,
        ExperienceBalancedBuffer,
        ReservoirSamplingBuffer,
    )

    if name == "experience_balanced":
        return ExperienceBalancedBuffer(max_size=mem_size, adaptive_size=True)
    if name == "class_balanced":
        return ClassBalancedBuffer(max_size=mem_size, adaptive_size=True)
    if name == "reservoir":
        return ReservoirSamplingBuffer(max_size=mem_size)
    raise ValueError(f"storage_policy: got {name!r}, expected one of {', '.join(STORAGE_POLICIES)}")


class ER(MultimodalSupervisedTemplate):
    """Experience replay with an Avalanche storage policy.

    :param mem_size: buffer size (samples).
    :param batch_size_mem: replayed samples per step (default: the training batch size).
    :param storage_policy: how the buffer is filled: balanced over experiences,
        over classes, or reservoir sampling.
    """

    def __init__(
        self,
        *,
        mem_size: Annotated[int, Range(ge=1)] = 200,
        batch_size_mem: Optional[Annotated[int, Range(ge=1)]] = None,
        storage_policy: Literal["experience_balanced", "class_balanced", "reservoir"] = "experience_balanced",
        plugins: Optional[List[Any]] = None,
        train_mb_size: int = 1,
        **base_kwargs,
    ):
        self.replay_plugin = ReplayPlugin(
            mem_size=mem_size,
            batch_size=train_mb_size,
            batch_size_mem=batch_size_mem or train_mb_size,
            storage_policy=make_storage_policy(storage_policy, mem_size),
        )
        super().__init__(plugins=list(plugins or []) + [self.replay_plugin], train_mb_size=train_mb_size, **base_kwargs)


@register_method(
    "er",
    summary="experience replay with an Avalanche storage policy",
    params_from=ER,
    family="replay",
    reference="Chaudhry et al., 2019",
)
def _build_er(ctx: BuildContext, p: dict):
    return ER(**ctx.common_kwargs(ER), **p)


__all__ = ["ER", "STORAGE_POLICIES", "make_storage_policy"]
