"""Trainable-parameter report (PEFT style): what trains, per module."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from torch import nn

from ..backbones.base import VisionLanguageBackbone


@dataclass
class ParameterReport:
    """Trainable / total parameter counts per group of a model.

    ``rows`` maps a group name to ``(trainable, total)``; groups of a
    :class:`VisionLanguageBackbone` are ``<prefix>vision``, ``<prefix>text``,
    ``<prefix>logit_scale`` and ``<prefix>attachments.<name>``; other
    parameters are grouped by their first ``depth`` name components.
    """

    rows: Dict[str, Tuple[int, int]] = field(default_factory=dict)

    @property
    def trainable(self) -> int:
        return sum(t for t, _ in self.rows.values())

    @property
    def total(self) -> int:
        return sum(n for _, n in self.rows.values())

    @property
    def trainable_fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def as_dict(self) -> Dict[str, Dict[str, int]]:
        return {k: {"trainable": t, "total": n} for k, (t, n) in self.rows.items()}

    def __str__(self) -> str:
        width = max([len(k) for k in self.rows] + [len("module")])
        lines = [f"{'module':<{width}}  {'trainable':>12}  {'total':>12}  {'%':>7}"]
        for k, (t, n) in self.rows.items():
            pct = 100.0 * t / n if n else 0.0
            lines.append(f"{k:<{width}}  {t:>12,}  {n:>12,}  {pct:>6.2f}%")
        lines.append(
            f"{'TOTAL':<{width}}  {self.trainable:>12,}  {self.total:>12,}  "
            f"{100.0 * self.trainable_fraction:>6.2f}%"
        )
        return "\n".join(lines)


def trainable_parameter_report(model: nn.Module, *, depth: int = 2) -> ParameterReport:
    """Count trainable and total parameters per module group.

    :param model: any module; backbones inside it are broken down by tower
        and attachment.
    :param depth: name components used to group parameters that are not
        part of a backbone.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive int, got {depth!r}.")
    group_of: Dict[int, str] = {}
    for prefix, module in model.named_modules():
        if not isinstance(module, VisionLanguageBackbone):
            continue
        pre = f"{prefix}." if prefix else ""
        for tower in ("vision", "text"):
            for p in module.tower_parameters(tower):
                group_of[id(p)] = f"{pre}{tower}"
        for p in (module.logit_scale,):
            group_of[id(p)] = f"{pre}logit_scale"
        for name, att in module.attachments.items():
            for p in att.parameters():
                group_of[id(p)] = f"{pre}attachments.{name}"
        for name, p in module.named_base_parameters():
            group_of.setdefault(id(p), f"{pre}other")
    rows: Dict[str, List[int]] = {}
    seen = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        group = group_of.get(id(p), ".".join(name.split(".")[:depth]))
        row = rows.setdefault(group, [0, 0])
        row[1] += p.numel()
        if p.requires_grad:
            row[0] += p.numel()
    return ParameterReport({k: (v[0], v[1]) for k, v in rows.items()})


__all__ = ["ParameterReport", "trainable_parameter_report"]
