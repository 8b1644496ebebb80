"""Modality-level plots and numbers of a results folder: the OGM-GE modulation coefficient per
modality over training iterations, and per-modality forgetting over experiences.

Reads only the results folder: each strategy's ``metrics.jsonl`` (the coefficients
``OGMGE_Coeff_<m>_MB/...`` published by :class:`~avalanche_mm.strategies.OGMGEPlugin`) and
``state.json`` (the ``UnimodalForgetting_<m>_Stream`` scalars after each experience). The report
calls :func:`plot_modality_dynamics` once per study; :func:`ogm_coefficient_summary` gives the
numbers for a summary table.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np

from .io import read_jsonl

COEFF_PREFIX = "OGMGE_Coeff_"
FORGET_PREFIX = "UnimodalForgetting_"


def ogm_coefficients(folder: str) -> Dict[str, List[tuple]]:
    """Modality -> ``[(training iteration, coefficient), ...]`` from a strategy folder's metrics.jsonl."""
    path = os.path.join(folder, "metrics.jsonl")
    out: Dict[str, List[tuple]] = {}
    if not os.path.exists(path):
        return out
    for rec in read_jsonl(path):
        metric = str(rec.get("metric") or str(rec.get("name", "")).split("/")[0])
        if metric.startswith(COEFF_PREFIX) and metric.endswith("_MB"):
            m = metric[len(COEFF_PREFIX) : -len("_MB")]
            out.setdefault(m, []).append((int(rec.get("x_plot") or 0), float(rec["value"])))
    return out


def ogm_coefficient_summary(folder: str) -> Dict[str, float]:
    """``{"ogm_coeff_mean:<m>": mean, "ogm_coeff_min:<m>": min}`` of a strategy folder (empty without OGM-GE)."""
    out: Dict[str, float] = {}
    for m, pts in sorted(ogm_coefficients(folder).items()):
        vals = np.array([v for _, v in pts], dtype=float)
        out[f"ogm_coeff_mean:{m}"] = float(vals.mean())
        out[f"ogm_coeff_min:{m}"] = float(vals.min())
    return out


def forgetting_curves(state: Mapping[str, Any]) -> Dict[str, List[float]]:
    """Modality -> per-modality forgetting after each experience (NaN where not defined)."""
    scalars = state.get("scalars") or []
    mods = sorted({k[len(FORGET_PREFIX) : -len("_Stream")] for sc in scalars for k in sc
                   if k.startswith(FORGET_PREFIX) and k.endswith("_Stream")})
    return {m: [float(sc.get(f"{FORGET_PREFIX}{m}_Stream", float("nan"))) for sc in scalars] for m in mods}


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
    if width <= 1 or values.size < width:
        return values
    kernel = np.ones(width) / width
    return np.convolve(values, kernel, mode="valid")


def plot_modality_dynamics(plot_dir: str, study: str, out: str, states: Sequence[Mapping[str, Any]]) -> Dict[str, str]:
    """Draw the study's OGM-GE coefficient and per-modality forgetting plots into ``plot_dir``.

    :param plot_dir: where the PNG files go.
    :param study: the study name (file names and titles).
    :param out: the results folder (``<out>/<study>/<strategy>/metrics.jsonl``).
    :param states: the strategies' states.
    :return: caption -> file name (empty when there is nothing to draw).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    files: Dict[str, str] = {}
    os.makedirs(plot_dir, exist_ok=True)
    coeffs = {st["strategy"]: ogm_coefficients(os.path.join(out, study, st["strategy"])) for st in states}
    coeffs = {k: v for k, v in coeffs.items() if v}
    if coeffs:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for strategy, per_mod in coeffs.items():
            for m, pts in sorted(per_mod.items()):
                pts = sorted(pts)
                x = np.array([p[0] for p in pts], dtype=float)
                y = np.array([p[1] for p in pts], dtype=float)
                (line,) = ax.plot(x, y, alpha=0.25, lw=0.8)
                w = max(1, min(10, y.size // 10))
                ax.plot(x[w - 1 :] if w > 1 and y.size >= w else x, _smooth(y, w), color=line.get_color(), lw=1.6,
                        label=f"{strategy}: {m}")
        ax.set_xlabel("training iteration")
        ax.set_ylabel("coefficient k (1 = not slowed)")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=7)
        ax.set_title(f"{study}: OGM-GE modulation coefficient per modality")
        name = f"{study}_ogm_coefficient.png"
        fig.savefig(os.path.join(plot_dir, name), dpi=110, bbox_inches="tight")
        plt.close(fig)
        files["OGM-GE modulation coefficient per modality"] = name
    curves = {st["strategy"]: forgetting_curves(st) for st in states}
    curves = {k: v for k, v in curves.items() if v and any(np.isfinite(x) for c in v.values() for x in c)}
    if curves:
        mods = sorted({m for c in curves.values() for m in c})
        fig, axes = plt.subplots(1, len(mods), figsize=(4.2 * len(mods), 3.4), squeeze=False)
        for ax, m in zip(axes.flat, mods):
            for strategy, c in curves.items():
                if m in c:
                    ax.plot(range(1, len(c[m]) + 1), [100 * v for v in c[m]], marker="o", label=strategy)
            ax.set_title(f"{m} alone")
            ax.set_xlabel("after experience")
            ax.set_ylabel("forgetting (%)")
        axes.flat[0].legend(fontsize=7)
        fig.suptitle(f"{study}: per-modality forgetting")
        name = f"{study}_modality_forgetting.png"
        fig.savefig(os.path.join(plot_dir, name), dpi=110, bbox_inches="tight")
        plt.close(fig)
        files["Per-modality forgetting over experiences"] = name
    return files


__all__ = ["ogm_coefficients", "ogm_coefficient_summary", "forgetting_curves", "plot_modality_dynamics"]
