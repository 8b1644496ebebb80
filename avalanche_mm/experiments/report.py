"""Summary tables, plots and the Markdown/HTML report of a results folder.

Everything here reads only the results folder (``config.yaml``,
``environment.json``, each strategy's ``state.json`` and ``metrics.jsonl``),
so ``avalanche-mm report DIR`` rebuilds the same report at any time, also from
an interrupted run (partial strategies are reported as such).

One source, three renderings: :func:`report_context` collects every table,
plot and sentence once; the Jinja2 template ``templates/report.md.j2`` renders
it to ``report.md`` (and ``summary.md``); ``report.html`` is that Markdown
converted by the ``markdown`` package; the console text prints the same tables
with :func:`text_table`.

New methods need no change here: any numeric scalar a method logs during
evaluation (``state.json`` scalars) or training (last value in its
``metrics.jsonl``), and any numeric key added to a strategy's summary, appears
in the study's "Further metrics" table; training metrics named
``<family>_<modality>[_Epoch|_MB|...]`` (e.g. ``OGMGE_Ratio_audio_Epoch``) get
a per-modality plot.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import yaml

from .io import atomic_write_csv, atomic_write_json, atomic_write_text, read_json, read_jsonl
from .plots_modality import plot_modality_dynamics
from .state import read_state

NAN = float("nan")

#: alignment columns: (scalar name in state.json, column title, lower-is-better)
ALIGNMENT_COLUMNS = [
    ("DriftFromInit_modx_kl", "KL drift from init", True),
    ("DriftFromInit_argmax_consistency", "argmax agreement w/ init", False),
    ("DriftFromInit_rotation_image", "image rotation (deg)", True),
    ("DriftFromInit_rotation_text", "text rotation (deg)", True),
    ("DriftFromInit_inter_modal_deviation", "inter-modal deviation (deg)", True),
    ("Align_ModalityGap", "modality gap", True),
    ("Retrieval_MeanRecall", "probe mean recall", False),
]


def _mean(values) -> float:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else NAN


def _num(v) -> float:
    return NAN if v is None else float(v)


def _matrix(state: Mapping[str, Any]) -> np.ndarray:
    rows = state.get("rows") or []
    if not rows:
        return np.zeros((0, state.get("n_experiences", 0)))
    return np.array([[_num(v) for v in r] for r in rows], dtype=float)


#: scalar names (prefixes) that the fixed tables already show; every other
#: numeric scalar goes to the "Further metrics" table
SHOWN_SCALAR_PREFIXES = (
    "Top1_Acc_Stream", "Loss_Stream", "AccMatrix_", "MTIL_", "FusedAcc_", "UnimodalAcc_",
    "ModalityContribution_", "UnimodalForgetting_", "ModalityImbalanceIndex_",
)
#: training metrics left out of "Further metrics" (timings: wall time is in the summary table)
HIDDEN_TRAINING_PREFIXES = ("TrainTime", "TrainThroughput")
#: summary keys the fixed tables show; any other numeric key is rendered generically
SUMMARY_KEYS = frozenset({
    "study", "strategy", "method", "experiences_done", "n_experiences", "complete", "transfer", "avg", "last",
    "forgetting", "bwt", "fwt", "avg_seen", "avg_incremental", "train_seconds", "eval_seconds", "modalities",
    "imbalance_index", "contributions", "unimodal_forgetting", "alignment", "extra", "training",
})
#: modality names recognised in metric names besides those of the study's per-modality rows
KNOWN_MODALITIES = ("image", "text", "audio", "video", "depth")


def _shown_elsewhere(key: str) -> bool:
    return key.startswith(SHOWN_SCALAR_PREFIXES) or any(key == k for k, _, _ in ALIGNMENT_COLUMNS)


def strategy_summary(state: Mapping[str, Any], *, training: Optional[Mapping[str, float]] = None) -> Dict[str, Any]:
    """Every summary number of one strategy (accuracies as fractions).

    :param state: the strategy's ``state.json``.
    :param training: last value of each training-phase metric (from its
        ``metrics.jsonl``, see :func:`read_metrics`), kept under ``"training"``.
    """
    A = _matrix(state)
    T = state["n_experiences"]
    t = A.shape[0]
    out: Dict[str, Any] = {
        "study": state["study"],
        "strategy": state["strategy"],
        "method": state["method"],
        "experiences_done": t,
        "n_experiences": T,
        "complete": bool(state.get("complete")),
        "transfer": NAN, "avg": NAN, "last": NAN, "forgetting": NAN, "bwt": NAN, "fwt": NAN,
        "avg_seen": NAN,
        "avg_incremental": NAN,
        "train_seconds": float(sum(state.get("train_seconds") or [])),
        "eval_seconds": float(sum(state.get("eval_seconds") or [])),
    }
    if t == 0:
        out.update(extra={}, training=dict(training or {}))
        return out
    uni = (state.get("unimodal") or [{}])[-1] if state.get("unimodal") else {}
    if _shared(state):
        # fixed test sets evaluated after every experience: no diagonal; "seen" is every test
        # set, forgetting and BWT compare each column with its earlier rows (shared_test_summary)
        from avalanche_mm.metrics.functional.retrieval_stream import shared_test_summary

        out["avg_seen"] = out["last"] = _mean(A[t - 1])
        out["avg_incremental"] = out["avg"] = _mean([_mean(r) for r in A])
        try:
            summ = shared_test_summary(A, baseline=state.get("baseline"))
        except ValueError:
            summ = {}
        out["forgetting"] = summ.get("forgetting", NAN)
        out["bwt"] = summ.get("bwt", NAN)
        out["modalities"] = {m: _mean(vals) for m, vals in sorted(uni.items())}
    else:
        _per_experience_summary(out, A, state, t, T)
        # per-modality accuracy: final row, averaged over the experiences seen
        out["modalities"] = {m: _mean(vals[:t]) for m, vals in sorted(uni.items())}
    scalars = (state.get("scalars") or [{}])[-1]
    out["imbalance_index"] = _num(scalars.get("ModalityImbalanceIndex_Stream"))
    out["contributions"] = {
        k[len("ModalityContribution_"):-len("_Stream")]: _num(v)
        for k, v in sorted(scalars.items())
        if k.startswith("ModalityContribution_") and k.endswith("_Stream")
    }
    out["unimodal_forgetting"] = {
        k[len("UnimodalForgetting_"):-len("_Stream")]: _num(v)
        for k, v in sorted(scalars.items())
        if k.startswith("UnimodalForgetting_") and k.endswith("_Stream")
    }
    out["alignment"] = {key: _num(scalars.get(key)) for key, _, _ in ALIGNMENT_COLUMNS if key in scalars}
    out["extra"] = {k: _num(v) for k, v in sorted(scalars.items()) if not _shown_elsewhere(k) and _is_number(v)}
    out["training"] = dict(training or {})
    return out


def _shared(state: Mapping[str, Any]) -> bool:
    """The state's rows are over shared test sets (one column per fixed test set)."""
    return state.get("test_protocol") == "shared"


def _per_experience_summary(out: Dict[str, Any], A: np.ndarray, state: Mapping[str, Any], t: int, T: int) -> None:
    """The accuracy-matrix summaries (test experience i = training experience i)."""
    from avalanche_mm.metrics.functional.stream import (
        backward_transfer,
        forgetting,
        forward_transfer,
        mtil_summary,
    )

    out["avg_seen"] = _mean(A[t - 1, :t])
    seen_rows = [_mean(A[k, : k + 1]) for k in range(t)]
    out["avg_incremental"] = _mean(seen_rows)
    if t == T and T >= 2 and np.all(np.isfinite(A)):
        out.update({k: v for k, v in mtil_summary(A).items()})
    if t >= 2 and np.all(np.isfinite(A[:t, :t][np.tril_indices(t)])):
        out["forgetting"] = forgetting(A, step=t - 1)
        out["bwt"] = backward_transfer(A, step=t - 1)
    base = state.get("baseline")
    if base is not None and t >= 2:
        b = np.array([_num(v) for v in base])
        try:
            out["fwt"] = forward_transfer(A, b, step=t - 1)
        except ValueError:
            out["fwt"] = NAN


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def transfer_curve(state: Mapping[str, Any]) -> List[float]:
    """Mean accuracy on the experiences not trained yet, before training and after each one."""
    T = state["n_experiences"]
    out = []
    base = state.get("baseline")
    out.append(_mean(base) if base is not None else NAN)
    for t, row in enumerate(state.get("rows") or []):
        out.append(_mean(row[t + 1 :]) if t + 1 < T and not _shared(state) else NAN)
    return out


def seen_curve(state: Mapping[str, Any]) -> List[float]:
    """Mean accuracy on the experiences trained so far, after each one."""
    if _shared(state):  # every shared test set counts after every experience
        return [_mean(row) for row in state.get("rows") or []]
    return [_mean(row[: t + 1]) for t, row in enumerate(state.get("rows") or [])]


def modality_curves(state: Mapping[str, Any]) -> Dict[str, List[float]]:
    """Per modality: mean accuracy over the experiences seen so far, after each experience."""
    curves: Dict[str, List[float]] = {}
    for t, uni in enumerate(state.get("unimodal") or []):
        for m, vals in uni.items():
            curves.setdefault(m, [NAN] * t).append(_mean(vals[: t + 1]))
    return curves


def scalar_curve(state: Mapping[str, Any], key: str, *, initial: Optional[float] = None) -> List[float]:
    """A scalar over experiences (``initial`` prepended when given)."""
    vals = [_num(s.get(key)) for s in (state.get("scalars") or [])]
    return ([initial] if initial is not None else []) + vals


# ---------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------
def _pct(v: float) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{100 * v:.1f}"


def _fmt(v: float, digits: int = 3) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> List[List[str]]:
    return [list(headers)] + [list(r) for r in rows]


def main_table(summaries: Sequence[Mapping[str, Any]], *, multi_task: bool = True) -> List[List[str]]:
    """The summary table (accuracies in %).

    MTIL-style studies (one task per experience): Transfer / Avg / Last,
    forgetting, BWT, FWT. Other streams (class-incremental, ...): final
    average accuracy on the seen experiences, average incremental accuracy,
    forgetting, BWT.
    """
    rows = []
    for s in summaries:
        name = s["strategy"] + ("" if s["complete"] else f" (partial {s['experiences_done']}/{s['n_experiences']})")
        if multi_task:
            rows.append([
                name, s["method"], _pct(s["transfer"]), _pct(s["avg"]), _pct(s["last"]),
                _pct(s["forgetting"]), _pct(s["bwt"]), _pct(s["fwt"]), f"{s['train_seconds']:.0f}",
            ])
        else:
            rows.append([
                name, s["method"], _pct(s["avg_seen"]), _pct(s["avg_incremental"]),
                _pct(s["forgetting"]), _pct(s["bwt"]), f"{s['train_seconds']:.0f}",
            ])
    if multi_task:
        return _table(["strategy", "method", "Transfer", "Avg", "Last", "Forgetting", "BWT", "FWT", "train s"], rows)
    return _table(["strategy", "method", "Final avg acc", "Avg incremental acc", "Forgetting", "BWT", "train s"], rows)


def modality_table(summaries: Sequence[Mapping[str, Any]]) -> Optional[List[List[str]]]:
    """Per-modality accuracy (seen experiences, final), contributions and imbalance index."""
    mods = sorted({m for s in summaries for m in s.get("modalities", {}) if m != "fused"})
    if not mods:
        return None
    rows = []
    for s in summaries:
        acc = s.get("modalities", {})
        contrib = s.get("contributions", {})
        row = [s["strategy"], _pct(acc.get("fused", s["avg_seen"]))]
        row += [_pct(acc.get(m, NAN)) for m in mods]
        row += [_pct(contrib.get(m, NAN)) for m in mods]
        row += [_pct(s.get("unimodal_forgetting", {}).get(m, NAN)) for m in mods]
        row += [_fmt(s.get("imbalance_index", NAN))]
        rows.append(row)
    headers = ["strategy", "fused acc"] + [f"{m} alone" for m in mods] + [f"{m} contribution" for m in mods]
    headers += [f"{m} forgetting" for m in mods] + ["imbalance index"]
    return _table(headers, rows)


def alignment_table(summaries: Sequence[Mapping[str, Any]]) -> Optional[List[List[str]]]:
    """Alignment drift of the probe set after the last experience."""
    keys = [(k, title) for k, title, _ in ALIGNMENT_COLUMNS if any(k in s.get("alignment", {}) for s in summaries)]
    if not keys:
        return None
    rows = []
    for s in summaries:
        al = s.get("alignment", {})
        rows.append([s["strategy"]] + [_fmt(al.get(k, NAN)) for k, _ in keys])
    return _table(["strategy"] + [t for _, t in keys], rows)


def matrix_table(state: Mapping[str, Any], names: Sequence[str], *, phases: Optional[Sequence[str]] = None) -> List[List[str]]:
    """The accuracy matrix (%), with the initial (zero-shot) row first.

    :param names: the test experiences (columns).
    :param phases: the training experiences (rows; default ``names``, as when test
        experience i is experience i's).
    """
    phases = list(phases) if phases is not None else list(names)
    rows = []
    if state.get("baseline") is not None:
        rows.append(["initial"] + [_pct(_num(v)) for v in state["baseline"]])
    for k, row in zip(state.get("finished") or [], state.get("rows") or []):
        rows.append([f"after {phases[k]}"] + [_pct(_num(v)) for v in row])
    return _table(["row \\ test"] + list(names), rows)


def text_table(table: Sequence[Sequence[str]]) -> str:
    """A fixed-width text table."""
    widths = [max(len(str(r[i])) for r in table) for i in range(len(table[0]))]
    lines = []
    for j, r in enumerate(table):
        lines.append("  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(table: Sequence[Sequence[str]]) -> str:
    """A Markdown table (first column left-aligned, the others right-aligned)."""

    def cell(c: Any) -> str:
        return str(c).replace("|", "\\|")

    head = "| " + " | ".join(cell(c) for c in table[0]) + " |"
    sep = "|" + "|".join(["---"] + ["---:"] * (len(table[0]) - 1)) + "|"
    body = ["| " + " | ".join(cell(c) for c in r) + " |" for r in table[1:]]
    return "\n".join([head, sep] + body)


def _cell(v: float) -> str:
    return "-" if v is None or not math.isfinite(v) else (f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3f}")


def _flat_numbers(summary: Mapping[str, Any]) -> Dict[str, float]:
    """The summary keys no fixed table shows: numbers, and mappings of numbers as ``key.sub``."""
    out: Dict[str, float] = {}
    for key, value in summary.items():
        if key in SUMMARY_KEYS:
            continue
        if _is_number(value):
            out[key] = float(value)
        elif isinstance(value, Mapping):
            out.update({f"{key}.{k}": float(v) for k, v in value.items() if _is_number(v)})
    return out


def extra_metrics_table(summaries: Sequence[Mapping[str, Any]]) -> Optional[List[List[str]]]:
    """Every other number the strategies produced: one row per metric, one column per strategy.

    Rows: evaluation scalars after the last experience that no fixed table
    shows (``summary["extra"]``), the last value of each training metric
    (``summary["training"]``, marked "(training, last)"), then any other
    numeric summary key. Metric names are code spans (they are the names in
    ``metrics.jsonl``).
    """
    rows: Dict[str, List[str]] = {}
    sources = [
        (lambda s: s.get("extra") or {}, "`{}`"),
        (lambda s: s.get("training") or {}, "`{}` (training, last)"),
        (_flat_numbers, "`{}`"),
    ]
    for get, label in sources:
        keys = sorted({k for s in summaries for k in get(s)})
        for k in keys:
            rows[label.format(k)] = [_cell(_num(get(s).get(k))) for s in summaries]
    if not rows:
        return None
    return _table(["metric"] + [s["strategy"] for s in summaries], [[k] + v for k, v in rows.items()])


# ---------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def MaxNLocator(**kwargs):  # noqa: N802 - matplotlib's name
    from matplotlib.ticker import MaxNLocator as _M

    return _M(**kwargs)


def _save(fig, path: str) -> str:
    import io as _io

    from .io import atomic_write_bytes

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def modality_families(
    series: Mapping[str, Mapping[str, Sequence[float]]], modalities: Sequence[str]
) -> Dict[str, Dict[Tuple[str, str], Sequence[float]]]:
    """Group per-modality training metrics: family -> {(strategy, modality): values}.

    A metric ``<family>_<modality>[_Epoch|_MB|_Exp|_Stream|_Iter]`` (e.g.
    ``OGMGE_Ratio_audio_Epoch``) belongs to ``<family>`` (``OGMGE_Ratio``).

    :param series: strategy -> metric name -> values in logging order.
    :param modalities: the modality names to recognise.
    """
    if not modalities:
        return {}
    alternatives = "|".join(re.escape(m) for m in sorted(modalities, key=len, reverse=True))
    pattern = re.compile(rf"^(?P<family>.+?)_(?P<modality>{alternatives})(?:_(?:Epoch|MB|Exp|Stream|Iter))?$")
    out: Dict[str, Dict[Tuple[str, str], Sequence[float]]] = {}
    for strategy, metrics in series.items():
        for name, values in metrics.items():
            match = pattern.match(name)
            if match and len(values):
                out.setdefault(match["family"], {})[(strategy, match["modality"])] = values
    return dict(sorted(out.items()))


def plot_study(
    folder: str,
    study: str,
    states: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    *,
    training_series: Optional[Mapping[str, Mapping[str, Sequence[float]]]] = None,
    max_panels: int = 6,
    phases: Optional[Sequence[str]] = None,
) -> Dict[str, str]:
    """Draw the study's plots into ``folder``; returns title -> file name.

    :param names: the test experiences (matrix columns).
    :param phases: the training experiences (matrix rows; default ``names``).

    :param training_series: strategy -> training metric -> values in logging
        order (:func:`read_metrics`); its per-modality families
        (:func:`modality_families`) get the "per-modality training signals" plot.
    :param max_panels: at most this many families in that plot.
    """
    plt = _plt()
    out: Dict[str, str] = {}
    done = [s for s in states if s.get("rows")]
    if not done:
        return out
    # accuracy matrices
    n = len(done)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.9 * rows), squeeze=False)
    fig.subplots_adjust(wspace=0.55, hspace=0.6)
    for k, (ax, st) in enumerate(zip(axes.flat, done)):
        A = _matrix(st) * 100
        full = np.full((st["n_experiences"], A.shape[1]), np.nan)
        full[: A.shape[0]] = A
        im = ax.imshow(full, vmin=0, vmax=100, cmap="viridis")
        for (i, j), v in np.ndenumerate(full):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v < 60 else "black")
        ax.set_title(st["strategy"], fontsize=9)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(phases or names)))
        if k % cols == 0:
            ax.set_yticklabels([f"after {n}" for n in (phases or names)], fontsize=7)
        else:
            ax.set_yticklabels([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(im, ax=axes, shrink=0.7, label="accuracy (%)")
    fig.suptitle(f"{study}: accuracy matrix a(t, i)")
    out["Accuracy matrices"] = os.path.basename(_save(fig, os.path.join(folder, f"{study}_accuracy_matrix.png")))
    plt.close(fig)

    # zero-shot transfer and seen accuracy over experiences
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    fig.subplots_adjust(wspace=0.25)
    for st in done:
        curve = np.array(transfer_curve(st)) * 100
        ax1.plot(range(-1, len(curve) - 1), curve, marker="o", label=st["strategy"])
        seen = np.array(seen_curve(st)) * 100
        ax2.plot(range(len(seen)), seen, marker="o", label=st["strategy"])
    ax1.set_title("transfer: accuracy on experiences not trained yet", fontsize=10)
    ax1.set_xlabel("after experience (-1 = before training)")
    ax1.set_ylabel("accuracy (%)")
    ax2.set_title("average accuracy on experiences seen so far", fontsize=10)
    ax2.set_xlabel("after experience")
    ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    out["Transfer and seen accuracy over experiences"] = os.path.basename(
        _save(fig, os.path.join(folder, f"{study}_transfer.png"))
    )
    plt.close(fig)

    # per-modality accuracy over experiences
    if any(st.get("unimodal") and any(st["unimodal"]) for st in done):
        mods = sorted({m for st in done for u in st.get("unimodal") or [] for m in u}, key=lambda m: (m != "fused", m))
        fig, axes = plt.subplots(1, len(mods), figsize=(3.8 * len(mods), 3.6), squeeze=False)
        fig.subplots_adjust(wspace=0.35, top=0.8)
        for ax, m in zip(axes.flat, mods):
            for st in done:
                c = modality_curves(st).get(m)
                if c:
                    ax.plot(range(len(c)), np.array(c) * 100, marker="o", label=st["strategy"])
            ax.set_title("fused (all modalities)" if m == "fused" else f"{m} alone", fontsize=10)
            ax.set_xlabel("after experience")
            ax.set_ylabel("accuracy on seen (%)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.flat[0].legend(fontsize=7)
        fig.suptitle(f"{study}: per-modality accuracy over experiences")
        out["Per-modality accuracy over experiences"] = os.path.basename(
            _save(fig, os.path.join(folder, f"{study}_modalities.png"))
        )
        plt.close(fig)

    # alignment drift over experiences
    keys = [k for k in ("DriftFromInit_modx_kl", "DriftFromInit_rotation_image", "DriftFromInit_rotation_text", "Align_ModalityGap")
            if any(k in s for st in done for s in st.get("scalars") or [])]
    if keys:
        fig, axes = plt.subplots(1, len(keys), figsize=(3.8 * len(keys), 3.6), squeeze=False)
        fig.subplots_adjust(wspace=0.3, top=0.8)
        titles = {
            "DriftFromInit_modx_kl": "KL of similarities vs initial",
            "DriftFromInit_rotation_image": "image-space rotation vs initial (deg)",
            "DriftFromInit_rotation_text": "text-space rotation vs initial (deg)",
            "Align_ModalityGap": "modality gap",
        }
        for ax, key in zip(axes.flat, keys):
            for st in done:
                init = 0.0 if key.startswith("DriftFromInit_") else _num((st.get("baseline_scalars") or {}).get(key))
                c = scalar_curve(st, key, initial=init)
                ax.plot(range(-1, len(c) - 1), c, marker="o", label=st["strategy"])
            ax.set_title(titles.get(key, key), fontsize=9)
            ax.set_xlabel("after experience (-1 = before)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.flat[0].legend(fontsize=7)
        fig.suptitle(f"{study}: cross-modal alignment drift (probe set)")
        out["Alignment drift over experiences"] = os.path.basename(_save(fig, os.path.join(folder, f"{study}_alignment.png")))
        plt.close(fig)

    # per-modality signals the methods log during training (OGM-GE ratios and coefficients, ...)
    mods = {m for st in done for u in (st.get("unimodal") or []) for m in u if m != "fused"} | set(KNOWN_MODALITIES)
    families = modality_families(training_series or {}, sorted(mods))
    if families:
        shown = list(families.items())[:max_panels]
        fig, axes = plt.subplots(1, len(shown), figsize=(3.8 * len(shown), 3.6), squeeze=False)
        fig.subplots_adjust(wspace=0.3, top=0.8)
        colours = {st["strategy"]: f"C{i % 10}" for i, st in enumerate(done)}
        styles = {m: ("-", "--", ":", "-.")[i % 4] for i, m in enumerate(sorted(mods))}
        for ax, (family, lines) in zip(axes.flat, shown):
            for (strategy, modality), values in sorted(lines.items()):
                ax.plot(range(len(values)), values, marker="o" if len(values) <= 30 else None, markersize=3,
                        color=colours.get(strategy), linestyle=styles[modality], label=f"{strategy}: {modality}")
            ax.set_title(family, fontsize=9)
            ax.set_xlabel("logged training step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend(fontsize=6)
        fig.suptitle(f"{study}: per-modality training signals")
        out["Per-modality training signals"] = os.path.basename(
            _save(fig, os.path.join(folder, f"{study}_modality_signals.png"))
        )
        plt.close(fig)
    return out


# ---------------------------------------------------------------------------
# expected phenomena
# ---------------------------------------------------------------------------
def _metric(summary: Mapping[str, Any], metric: str) -> float:
    if metric.startswith("modality:"):
        return _num(summary.get("modalities", {}).get(metric.split(":", 1)[1]))
    return _num(summary.get(metric))


def _greater_over_studies(item: Mapping[str, Any], studies: List[str],
                          summaries: Mapping[str, Mapping[str, Mapping[str, Any]]], text: str) -> Tuple[bool, str]:
    """``greater`` on the means over ``studies`` (each must have run both strategies)."""
    hi, lo, metric = item["higher"], item["lower"], item["metric"]
    missing = [s for s in studies if hi not in summaries.get(s, {}) or lo not in summaries.get(s, {})]
    if missing:
        return False, f"{text}: {hi} or {lo} has not run in {', '.join(missing)}"
    va = [_metric(summaries[s][hi], metric) for s in studies]
    vb = [_metric(summaries[s][lo], metric) for s in studies]
    scale = 1.0 if metric == "imbalance_index" else 100.0
    ma, mb = float(np.mean(va)), float(np.mean(vb))
    wins = sum(a > b for a, b in zip(va, vb))
    return ma > mb, (f"{text or metric}: {hi} {scale * ma:.1f} vs {lo} {scale * mb:.1f} "
                     f"(mean over {len(studies)} runs; {hi} ahead in {wins} of {len(studies)})")


def check_expectations(items: Sequence[Mapping[str, Any]], summaries: Mapping[str, Mapping[str, Mapping[str, Any]]],
                       states: Mapping[str, Sequence[Mapping[str, Any]]], env: Mapping[str, Any]) -> List[Tuple[bool, str]]:
    """Evaluate ``report.expectations`` -> ``[(holds, sentence with the numbers)]``.

    Kinds: ``above_chance`` (the strategy's accuracy on experiences it has not
    trained on - the initial row - is above the uniform-guess accuracy by
    ``margin``, default 0.1), ``greater`` (``metric`` of ``higher`` > that of
    ``lower``), ``at_least`` (``metric`` of ``strategy`` >= ``value``).
    For ``greater``, ``study`` may list several studies (repeats of one study
    with other seeds): the means over them are compared.
    """
    out = []
    for item in items:
        study, kind = item["study"], item["kind"]
        text = item.get("description") or ""
        if kind == "greater" and isinstance(study, (list, tuple)):
            out.append(_greater_over_studies(item, list(study), summaries, text))
            continue
        sums = summaries.get(study, {})
        if kind == "above_chance":
            st = next((s for s in states.get(study, []) if s["strategy"] == item["strategy"]), None)
            chance = env.get("studies", {}).get(study, {}).get("chance")
            if st is None or st.get("baseline") is None or not chance:
                out.append((False, f"{text or 'above chance'}: not measurable (no initial evaluation)"))
                continue
            acc, ch = _mean(st["baseline"]), float(np.mean(chance))
            margin = float(item.get("margin", 0.1))
            out.append((acc >= ch + margin, f"{text or 'zero-shot above chance'}: {item['strategy']} {100 * acc:.1f}% "
                        f"before training vs {100 * ch:.1f}% chance"))
        elif kind == "greater":
            a, b = sums.get(item["higher"]), sums.get(item["lower"])
            if a is None or b is None:
                out.append((False, f"{text}: {item['higher']} or {item['lower']} has not run"))
                continue
            va, vb = _metric(a, item["metric"]), _metric(b, item["metric"])
            scale = 1.0 if item["metric"] == "imbalance_index" else 100.0
            out.append((va > vb, f"{text or item['metric']}: {item['higher']} {scale * va:.1f} vs {item['lower']} {scale * vb:.1f}"))
        else:
            a = sums.get(item["strategy"])
            if a is None:
                out.append((False, f"{text}: {item['strategy']} has not run"))
                continue
            v = _metric(a, item["metric"])
            out.append((v >= float(item["value"]), f"{text or item['metric']}: {item['strategy']} {v:.3f} (>= {item['value']})"))
    return out


# ---------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------
def load_results(out: str) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, List[Dict[str, Any]]]]:
    """``(config, environment, {study: [states in config order]})`` of a results folder."""
    cfg_path = os.path.join(out, "config.yaml")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{out} is not a results folder: it has no config.yaml (run `avalanche-mm run` first).")
    with open(cfg_path, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh)
    env_path = os.path.join(out, "environment.json")
    env = read_json(env_path) if os.path.exists(env_path) else {}
    states: Dict[str, List[Dict[str, Any]]] = {}
    for sname, study in cfg["studies"].items():
        for stname in study["strategies"]:
            st = read_state(os.path.join(out, sname, stname))
            if st is not None:
                states.setdefault(sname, []).append(st)
    return cfg, env, states


def read_metrics(out: str, cfg: Mapping[str, Any]) -> Tuple[Dict[Tuple[str, str], Dict[str, List[float]]], int]:
    """Combine every strategy's ``metrics.jsonl`` into ``OUT/metrics.jsonl`` (with
    study and strategy fields) and collect their training-phase values.

    :return: ``({(study, strategy): {metric: [values in logging order]}}, number of records)``.
    """
    lines = []
    series: Dict[Tuple[str, str], Dict[str, List[float]]] = {}
    for sname, study in cfg["studies"].items():
        for stname in study["strategies"]:
            mine = series.setdefault((sname, stname), {})
            for rec in read_jsonl(os.path.join(out, sname, stname, "metrics.jsonl")):
                lines.append(json.dumps({"study": sname, "strategy": stname, **rec}))
                value = rec.get("value")
                if rec.get("phase") == "train" and _is_number(value) and rec.get("metric"):
                    mine.setdefault(rec["metric"], []).append(float(value))
    atomic_write_text(os.path.join(out, "metrics.jsonl"), "\n".join(lines) + ("\n" if lines else ""))
    return series, len(lines)


def _last_training_values(series: Mapping[str, Sequence[float]]) -> Dict[str, float]:
    return {k: v[-1] for k, v in sorted(series.items()) if v and not k.startswith(HIDDEN_TRAINING_PREFIXES)}


def _study_facts(study: Mapping[str, Any], info: Mapping[str, Any], names: Sequence[str]) -> List[str]:
    """The bullet points under a study's title (Markdown)."""
    bench, model = study["benchmark"], study["model"]
    facts = [f"benchmark: `{bench['name']}`" + (f" - {info['description']}" if info.get("description") else "")]
    arch = model.get("backbone") if model["kind"] == "clip" else model.get("name")
    params = info.get("parameters")
    facts.append(f"model: `{model['kind']}` / `{arch}`"
                 + (f", {params['trainable']:,} trainable of {params['total']:,} parameters" if params else ""))
    pre = info.get("pretraining")
    if pre:
        facts.append(f"backbone pretrained on the reference split ({pre.get('reference_pairs', '?')} pairs, "
                     f"{pre.get('iterations', '?')} steps, final loss {pre.get('final_loss', NAN):.3f}; "
                     f"{'loaded from the cache' if pre.get('cached') else 'trained in this run'})")
    if info.get("test_protocol") == "shared":
        facts.append(f"training experiences: {', '.join(info.get('phases') or [])}; shared test sets evaluated after "
                     f"each: {', '.join(names)} (forgetting / BWT per test set against its earlier rows)")
    else:
        facts.append(f"experiences: {', '.join(names)}")
    return facts


def report_context(out: str, *, plots: Optional[bool] = None) -> Dict[str, Any]:
    """Everything the report shows, computed once (draws the plots into ``OUT/plots``).

    :return: ``{"name", "description", "studies": [{"key", "title", "facts",
        "tables": [{"caption", "rows", "console", "note"}], "plots": [{"caption",
        "file"}], "matrices": [{"strategy", "method", "rows"}]}], "expectations":
        [{"holds", "text"}], "environment": {...}, "rows": [summaries]}``; a
        table's ``rows`` start with the header; ``console`` tables are also printed.
    """
    cfg, env, states = load_results(out)
    do_plots = cfg.get("report", {}).get("plots", True) if plots is None else plots
    series, _ = read_metrics(out, cfg)
    all_rows: List[Dict[str, Any]] = []
    studies: List[Dict[str, Any]] = []
    by_study: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for sname, study in cfg["studies"].items():
        sts = states.get(sname, [])
        info = env.get("studies", {}).get(sname, {})
        names = info.get("experiences") or [f"exp{i}" for i in range(sts[0]["n_experiences"])] if sts else []
        summaries = [strategy_summary(st, training=_last_training_values(series.get((sname, st["strategy"]), {})))
                     for st in sts]
        all_rows.extend(summaries)
        by_study[sname] = {s["strategy"]: s for s in summaries}
        entry: Dict[str, Any] = {"key": sname, "title": study.get("title") or sname,
                                 "facts": _study_facts(study, info, names), "tables": [], "plots": [], "matrices": []}
        studies.append(entry)
        if not summaries:
            continue
        tables = entry["tables"]
        tables.append({"caption": "Summary (accuracies in %)", "console": True, "note": "",
                       "rows": main_table(summaries, multi_task=info.get("multi_task", True))})
        for caption, table in (
            ("Per-modality accuracy (%, final, seen experiences), contributions and imbalance", modality_table(summaries)),
            ("Cross-modal alignment after the last experience (probe set of reference pairs)", alignment_table(summaries)),
        ):
            if table:
                tables.append({"caption": caption, "console": True, "note": "", "rows": table})
        extra = extra_metrics_table(summaries)
        if extra:
            tables.append({"caption": "Further metrics", "console": False, "rows": extra,
                           "note": "Every other number the strategies logged: evaluation scalars after the last "
                                   "experience, and the last value of each training metric (names as in `metrics.jsonl`)."})
        if do_plots:
            files = plot_study(os.path.join(out, "plots"), sname, sts, names, phases=info.get("phases"),
                               training_series={st["strategy"]: series.get((sname, st["strategy"]), {}) for st in sts})
            files.update(plot_modality_dynamics(os.path.join(out, "plots"), sname, out, sts))  # OGM-GE k, per-modality forgetting
            entry["plots"] = [{"caption": caption, "file": fname} for caption, fname in files.items()]
        entry["matrices"] = [{"strategy": st["strategy"], "method": st["method"], "rows": matrix_table(st, names, phases=info.get("phases"))}
                             for st in sts]
    expectations = (cfg.get("report") or {}).get("expectations") or []
    checks = check_expectations(expectations, by_study, states, env) if expectations else []
    run_path = os.path.join(out, "run.json")
    run = read_json(run_path) if os.path.exists(run_path) else {}
    versions = env.get("versions", {})
    return {
        "name": cfg["name"],
        "description": cfg.get("description") or "",
        "html": cfg.get("report", {}).get("html", True),
        "studies": studies,
        "expectations": [{"holds": ok, "text": text} for ok, text in checks],
        "environment": {
            "device": env.get("device"), "threads": env.get("torch_threads"), "seed": env.get("seed"),
            "versions": ", ".join(f"{k} {v}" for k, v in versions.items() if v),
            "wall_seconds": run.get("seconds"),
        },
        "rows": all_rows,
    }


def _templates():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")),
        autoescape=False,  # Markdown; report.html escapes through the Markdown conversion and `| e`
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md_table"] = md_table
    return env


def render_markdown(context: Mapping[str, Any], *, summary: bool = False) -> str:
    """``report.md`` (or, with ``summary``, ``summary.md``: the console tables and
    the expectations only) from :func:`report_context`'s result."""
    return _templates().get_template("report.md.j2").render(**context, summary=summary)


def render_html(markdown_text: str, *, title: str) -> str:
    """``report.html``: the report's Markdown converted to HTML (tables, code spans,
    images) in a standalone page."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables", "sane_lists"], output_format="html")
    return _templates().get_template("report.html.j2").render(title=title, body=body)


def render_text(context: Mapping[str, Any]) -> str:
    """The console text: each study's console tables and the expectations."""
    parts: List[str] = []
    for study in context["studies"]:
        if not study["tables"]:
            continue
        parts.append(f"== {study['title']} ==")
        for table in study["tables"]:
            if table["console"]:
                parts += [table["caption"], text_table(table["rows"]), ""]
    if context["expectations"]:
        lines = [f"[{'yes' if e['holds'] else 'NO '}] {e['text']}" for e in context["expectations"]]
        parts += ["Expected phenomena", "\n".join(lines), ""]
    return "\n".join(parts)


def build_report(out: str, *, log: Callable = print, plots: Optional[bool] = None) -> Dict[str, Any]:
    """Write ``summary.*``, ``report.md``, ``report.html``, ``plots/`` and the combined
    ``metrics.jsonl`` of a results folder, and print the summary tables.

    :param out: the results folder.
    :param log: where the console text goes.
    :param plots: draw the plots (default: the config's ``report.plots``).
    :return: ``{"rows": [summaries], "tables": printed text, "report": path,
        "expectations": [{"holds", "text"}]}``.
    """
    context = report_context(out, plots=plots)
    report_md = render_markdown(context)
    from .retrieval import retrieval_report  # retrieval studies (issue 14): recall matrices, plots

    extra_md, extra_text = retrieval_report(out, plots=plots)
    report_md += extra_md
    atomic_write_text(os.path.join(out, "report.md"), report_md)
    if context["html"]:
        atomic_write_text(os.path.join(out, "report.html"), render_html(report_md, title=context["name"]))
    all_rows = context["rows"]
    flat_keys = ["study", "strategy", "method", "complete", "experiences_done", "n_experiences", "transfer", "avg", "last",
                 "avg_seen", "avg_incremental", "forgetting", "bwt", "fwt", "imbalance_index", "train_seconds", "eval_seconds"]
    atomic_write_json(os.path.join(out, "summary.json"), {"rows": all_rows})
    atomic_write_csv(os.path.join(out, "summary.csv"), [[r.get(k) for k in flat_keys] for r in all_rows], header=flat_keys)
    atomic_write_text(os.path.join(out, "summary.md"), render_markdown(context, summary=True))
    text = render_text(context) + extra_text
    if text:
        log(text)
    log(f"report: {os.path.join(out, 'report.md')} (and report.html, plots/, summary.csv)")
    return {"rows": all_rows, "tables": text, "report": os.path.join(out, "report.md"),
            "expectations": list(context["expectations"])}


__all__ = [
    "strategy_summary",
    "transfer_curve",
    "seen_curve",
    "modality_curves",
    "main_table",
    "modality_table",
    "alignment_table",
    "matrix_table",
    "text_table",
    "md_table",
    "extra_metrics_table",
    "modality_families",
    "plot_study",
    "check_expectations",
    "load_results",
    "read_metrics",
    "report_context",
    "render_markdown",
    "render_html",
    "render_text",
    "build_report",
]
