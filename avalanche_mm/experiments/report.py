"""Summary tables, plots and the Markdown/HTML report of a results folder.

Everything here reads only the results folder (``config.yaml``,
``environment.json`` and each strategy's ``state.json``), so
``avalanche-mm report DIR`` rebuilds the same report at any time, also from
an interrupted run (partial strategies are reported as such).
"""

from __future__ import annotations

import html
import json
import math
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import yaml

from .io import atomic_write_csv, atomic_write_json, atomic_write_text, read_json, read_jsonl
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


def strategy_summary(state: Mapping[str, Any]) -> Dict[str, Any]:
    """Every summary number of one strategy (accuracies as fractions)."""
    from avalanche_mm.metrics.functional.stream import (
        backward_transfer,
        forgetting,
        forward_transfer,
        mtil_summary,
    )

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
        return out
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
    # per-modality accuracy: final row, averaged over the experiences seen
    uni = (state.get("unimodal") or [{}])[-1] if state.get("unimodal") else {}
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
    return out


def transfer_curve(state: Mapping[str, Any]) -> List[float]:
    """Mean accuracy on the experiences not trained yet, before training and after each one."""
    T = state["n_experiences"]
    out = []
    base = state.get("baseline")
    out.append(_mean(base) if base is not None else NAN)
    for t, row in enumerate(state.get("rows") or []):
        out.append(_mean(row[t + 1 :]) if t + 1 < T else NAN)
    return out


def seen_curve(state: Mapping[str, Any]) -> List[float]:
    """Mean accuracy on the experiences trained so far, after each one."""
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


def matrix_table(state: Mapping[str, Any], names: Sequence[str]) -> List[List[str]]:
    """The accuracy matrix (%), with the initial (zero-shot) row first."""
    rows = []
    if state.get("baseline") is not None:
        rows.append(["initial"] + [_pct(_num(v)) for v in state["baseline"]])
    for k, row in zip(state.get("finished") or [], state.get("rows") or []):
        rows.append([f"after {names[k]}"] + [_pct(_num(v)) for v in row])
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
    """A Markdown table."""
    head = "| " + " | ".join(table[0]) + " |"
    sep = "|" + "|".join(["---"] + ["---:"] * (len(table[0]) - 1)) + "|"
    body = ["| " + " | ".join(str(c) for c in r) + " |" for r in table[1:]]
    return "\n".join([head, sep] + body)


def html_table(table: Sequence[Sequence[str]]) -> str:
    """An HTML table."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in table[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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


def plot_study(folder: str, study: str, states: Sequence[Mapping[str, Any]], names: Sequence[str]) -> Dict[str, str]:
    """Draw the study's plots into ``folder``; returns title -> file name."""
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
        full = np.full((st["n_experiences"], st["n_experiences"]), np.nan)
        full[: A.shape[0]] = A
        im = ax.imshow(full, vmin=0, vmax=100, cmap="viridis")
        for (i, j), v in np.ndenumerate(full):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v < 60 else "black")
        ax.set_title(st["strategy"], fontsize=9)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)))
        if k % cols == 0:
            ax.set_yticklabels([f"after {n}" for n in names], fontsize=7)
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
    return out


# ---------------------------------------------------------------------------
# expected phenomena
# ---------------------------------------------------------------------------
def _metric(summary: Mapping[str, Any], metric: str) -> float:
    if metric.startswith("modality:"):
        return _num(summary.get("modalities", {}).get(metric.split(":", 1)[1]))
    return _num(summary.get(metric))


def check_expectations(items: Sequence[Mapping[str, Any]], summaries: Mapping[str, Mapping[str, Mapping[str, Any]]],
                       states: Mapping[str, Sequence[Mapping[str, Any]]], env: Mapping[str, Any]) -> List[Tuple[bool, str]]:
    """Evaluate ``report.expectations`` -> ``[(holds, sentence with the numbers)]``.

    Kinds: ``above_chance`` (the strategy's accuracy on experiences it has not
    trained on - the initial row - is above the uniform-guess accuracy by
    ``margin``, default 0.1), ``greater`` (``metric`` of ``higher`` > that of
    ``lower``), ``at_least`` (``metric`` of ``strategy`` >= ``value``).
    """
    out = []
    for item in items:
        study, kind = item["study"], item["kind"]
        text = item.get("description") or ""
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


def _combine_metrics(out: str, cfg: Mapping[str, Any]) -> int:
    lines = []
    for sname, study in cfg["studies"].items():
        for stname in study["strategies"]:
            for rec in read_jsonl(os.path.join(out, sname, stname, "metrics.jsonl")):
                lines.append(json.dumps({"study": sname, "strategy": stname, **rec}))
    atomic_write_text(os.path.join(out, "metrics.jsonl"), "\n".join(lines) + ("\n" if lines else ""))
    return len(lines)


def build_report(out: str, *, log: Callable = print, plots: Optional[bool] = None) -> Dict[str, Any]:
    """Write ``summary.*``, ``report.md``, ``report.html``, ``plots/`` and the combined
    ``metrics.jsonl`` of a results folder, and print the summary tables.

    :return: ``{"rows": [summaries], "tables": printed text, "report": path}``.
    """
    cfg, env, states = load_results(out)
    do_plots = cfg.get("report", {}).get("plots", True) if plots is None else plots
    plot_dir = os.path.join(out, "plots")
    all_rows: List[Dict[str, Any]] = []
    text_parts: List[str] = []
    md: List[str] = [f"# {cfg['name']}", ""]
    if cfg.get("description"):
        md += [cfg["description"], ""]
    htm: List[str] = []
    summary_md: List[str] = [f"# {cfg['name']}: summary"]
    by_study: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for sname, study in cfg["studies"].items():
        sts = states.get(sname, [])
        info = env.get("studies", {}).get(sname, {})
        names = info.get("experiences") or [f"exp{i}" for i in range(sts[0]["n_experiences"])] if sts else []
        summaries = [strategy_summary(st) for st in sts]
        all_rows.extend(summaries)
        by_study[sname] = {s["strategy"]: s for s in summaries}
        title = study.get("title") or sname
        md += [f"## {title}", ""]
        md += [f"- benchmark: `{study['benchmark']['name']}`" + (f" - {info['description']}" if info.get("description") else "")]
        md += [f"- model: `{study['model']['kind']}` / `{study['model'].get('backbone') if study['model']['kind'] == 'clip' else study['model'].get('name')}`"
               + (f", {info['parameters']['trainable']:,} trainable of {info['parameters']['total']:,} parameters" if info.get("parameters") else "")]
        pre = info.get("pretraining")
        if pre:
            md += [f"- backbone pretrained on the reference split ({pre.get('reference_pairs', '?')} pairs, "
                   f"{pre.get('iterations', '?')} steps, final loss {pre.get('final_loss', float('nan')):.3f}; "
                   f"{'loaded from the cache' if pre.get('cached') else 'trained in this run'})"]
        md += [f"- experiences: {', '.join(names)}", ""]
        if not summaries:
            md += ["_no strategy has run yet_", ""]
            continue
        tables = [("Summary (accuracies in %)", main_table(summaries, multi_task=info.get("multi_task", True)))]
        mt = modality_table(summaries)
        if mt:
            tables.append(("Per-modality accuracy (%, final, seen experiences), contributions and imbalance", mt))
        at = alignment_table(summaries)
        if at:
            tables.append(("Cross-modal alignment after the last experience (probe set of reference pairs)", at))
        text_parts.append(f"== {title} ==")
        htm.append(f"<h2>{html.escape(title)}</h2>")
        htm.append("<ul>" + "".join(f"<li>{html.escape(line[2:])}</li>" for line in md[md.index(f"## {title}") + 2 :] if line.startswith("- ")) + "</ul>")
        summary_md.append(f"## {title}")
        for caption, table in tables:
            text_parts += [caption, text_table(table), ""]
            md += [f"### {caption}", "", md_table(table), ""]
            summary_md += [f"### {caption}", md_table(table)]
            htm += [f"<h3>{html.escape(caption)}</h3>", html_table(table)]
        if do_plots:
            files = plot_study(plot_dir, sname, sts, names)
            from .plots_modality import plot_modality_dynamics  # OGM-GE coefficient, per-modality forgetting

            files.update(plot_modality_dynamics(plot_dir, sname, out, sts))
            for caption, fname in files.items():
                md += [f"### {caption}", "", f"![{caption}](plots/{fname})", ""]
                htm += [f"<h3>{html.escape(caption)}</h3>", f'<img src="plots/{html.escape(fname)}" alt="{html.escape(caption)}">']
        md += ["### Accuracy matrices (%)", ""]
        htm.append("<h3>Accuracy matrices (%)</h3>")
        for st in sts:
            mt_ = matrix_table(st, names)
            md += [f"**{st['strategy']}** ({st['method']})", "", md_table(mt_), ""]
            htm += [f"<h4>{html.escape(st['strategy'])} ({html.escape(st['method'])})</h4>", html_table(mt_)]
    # expected phenomena
    expectations = (cfg.get("report") or {}).get("expectations") or []
    checks = check_expectations(expectations, by_study, states, env) if expectations else []
    if checks:
        lines = [f"[{'yes' if ok else 'NO '}] {text}" for ok, text in checks]
        text_parts += ["Expected phenomena", "\n".join(lines), ""]
        md += ["## Expected phenomena", ""] + [f"- {'yes' if ok else '**no**'}: {text}" for ok, text in checks] + [""]
        summary_md += ["## Expected phenomena", "\n".join(f"- {'yes' if ok else 'no'}: {t}" for ok, t in checks)]
        htm += ["<h2>Expected phenomena</h2><ul>"] + [f"<li>{'yes' if ok else '<b>no</b>'}: {html.escape(t)}</li>" for ok, t in checks] + ["</ul>"]
    # environment
    versions = env.get("versions", {})
    md += ["## Environment", "", f"- device: {env.get('device')}, threads: {env.get('torch_threads')}, seed: {env.get('seed')}",
           "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v), ""]
    run = read_json(os.path.join(out, "run.json")) if os.path.exists(os.path.join(out, "run.json")) else {}
    if run.get("seconds") is not None:
        md += [f"- wall time of the last `run` call: {run['seconds']:.0f}s", ""]
    atomic_write_text(os.path.join(out, "report.md"), "\n".join(md))
    if cfg.get("report", {}).get("html", True):
        style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;}table{border-collapse:collapse;margin:1em 0;}"
                 "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;}td:first-child,th:first-child{text-align:left;}"
                 "img{max-width:100%;}")
        body = [f"<h1>{html.escape(cfg['name'])}</h1>", f"<p>{html.escape(cfg.get('description') or '')}</p>"] + htm
        body += ["<h2>Environment</h2>", f"<p>device {html.escape(str(env.get('device')))}; "
                 + html.escape(", ".join(f"{k} {v}" for k, v in versions.items() if v)) + "</p>"]
        atomic_write_text(os.path.join(out, "report.html"),
                          f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(cfg['name'])}</title>"
                          f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
    # summary files
    flat_keys = ["study", "strategy", "method", "complete", "experiences_done", "n_experiences", "transfer", "avg", "last",
                 "avg_seen", "avg_incremental", "forgetting", "bwt", "fwt", "imbalance_index", "train_seconds", "eval_seconds"]
    atomic_write_json(os.path.join(out, "summary.json"), {"rows": all_rows})
    atomic_write_csv(os.path.join(out, "summary.csv"), [[r.get(k) for k in flat_keys] for r in all_rows], header=flat_keys)
    text = "\n".join(text_parts)
    atomic_write_text(os.path.join(out, "summary.md"), "\n\n".join(summary_md) + "\n")
    _combine_metrics(out, cfg)
    if text:
        log(text)
    log(f"report: {os.path.join(out, 'report.md')} (and report.html, plots/, summary.csv)")
    return {"rows": all_rows, "tables": text, "report": os.path.join(out, "report.md"),
            "expectations": [{"holds": ok, "text": t} for ok, t in checks]}


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
    "html_table",
    "plot_study",
    "check_expectations",
    "load_results",
    "build_report",
]
