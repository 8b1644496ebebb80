"""Per-modality transforms that work inside Avalanche's transform groups.

Avalanche's :class:`~avalanche.benchmarks.utils.transform_groups.TransformGroups`
applies a plain (single-argument) transform to ``element[0]``, i.e. to the
whole ``x`` dict of a multimodal sample. :class:`ModalityTransform` is such a
single-argument callable: it receives the dict and applies one transform per
modality, leaving missing (``None``) modalities and untouched modalities as
they are. It never iterates the sample itself, so the dict is never turned
into a list of its keys.
"""

from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional

from avalanche.benchmarks.utils.transform_groups import TransformGroups


class ModalityTransform:
    """Apply ``transforms[m]`` to modality ``m`` of a sample's ``x`` dict.

    :param transforms: mapping modality name -> callable(value) -> value.
        Modalities without an entry pass through unchanged.
    :param strict: if True (default), a modality named in ``transforms`` but
        absent from a sample raises; with False it is ignored.
    """

    def __init__(self, transforms: Mapping[str, Optional[Callable]], *, strict: bool = True):
        if not isinstance(transforms, Mapping):
            raise TypeError(
                "ModalityTransform expects a mapping modality name -> transform, got "
                f"{type(transforms).__name__}."
            )
        for name, t in transforms.items():
            if t is not None and not callable(t):
                raise TypeError(f"the transform for modality '{name}' is not callable: {t!r}.")
        self.transforms: Dict[str, Callable] = {
            k: v for k, v in transforms.items() if v is not None
        }
        self.strict = strict

    def __call__(self, x):
        if not isinstance(x, Mapping):
            raise TypeError(
                "ModalityTransform is applied to a sample's x, which must be a dict "
                f"modality -> value; got {type(x).__name__}."
            )
        out = dict(x)
        for name, t in self.transforms.items():
            if name not in out:
                if self.strict:
                    raise KeyError(
                        f"ModalityTransform has a transform for '{name}', but the sample's "
                        f"modalities are {sorted(out.keys())}."
                    )
                continue
            if out[name] is not None:
                out[name] = t(out[name])
        return out

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.transforms.items())
        return f"ModalityTransform({inner})"

    def __eq__(self, other):
        return isinstance(other, ModalityTransform) and self.transforms == other.transforms

    def __hash__(self):
        return id(self)


def make_transform_groups(
    *,
    train: Optional[Mapping[str, Callable]] = None,
    eval: Optional[Mapping[str, Callable]] = None,  # noqa: A002 - Avalanche's group name
    **other_groups: Mapping[str, Callable],
) -> TransformGroups:
    """Build Avalanche transform groups from per-modality transform mappings.

    :param train: modality -> transform for the ``train`` group.
    :param eval: modality -> transform for the ``eval`` group (defaults to
        ``train``'s, as Avalanche does).
    :param other_groups: further named groups, each a modality -> transform map.
    """
    groups = {}
    if train is not None:
        groups["train"] = ModalityTransform(train)
    if eval is not None:
        groups["eval"] = ModalityTransform(eval)
    for name, mapping in other_groups.items():
        groups[name] = ModalityTransform(mapping)
    return TransformGroups(groups)


__all__ = ["ModalityTransform", "make_transform_groups"]
