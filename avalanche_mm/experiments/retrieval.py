"""The main job's retrieval path: pair benchmarks, their model, metrics and report.

A study whose benchmark holds image-text pair phases (no classes: ``world-retrieval-stream``,
``flickr30k-retrieval``, ``coco-retrieval``) is trained with a
:class:`~avalanche_mm.models.RetrievalHead` instead of a zero-shot classifier, and evaluated
as a retrieval stream (:class:`~avalanche_mm.metrics.retrieval_stream.RetrievalStreamMetric`):
after each phase, recall@1/5/10 in both directions on every phase's test pairs. The
accuracy-matrix row of such a study is ``RetrievalR1_Exp`` (mean of the two R@1).

The runner calls three functions of this module (:func:`is_retrieval_bundle`,
:func:`build_retrieval_model`, :func:`retrieval_metrics`) and the report one
(:func:`retrieval_report_section`).

``world-retrieval-stream`` is the procedural world's pair benchmark for this path: the
world's held-out objects (combinations) are dealt into phases, so every phase brings new
objects (as Flickr30K phases bring new images); each phase has its own test pairs (one per
object, distinct captions), the world's reference split pretrains the backbone, and a
held-out zero-shot classification task over reference objects is attached.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from avalanche_mm.benchmarks.datasets import p9d as _p9d  # noqa: F401  (registers the p9d benchmark)
from avalanche_mm.benchmarks.registry import register_benchmark

from avalanche_mm.benchmarks.bundle import BenchmarkBundle, ReferenceSet
from avalanche_mm.models.build import apply_freeze as _apply_freeze


# ---------------------------------------------------------------------------
# the world's pair benchmark
# ---------------------------------------------------------------------------
def clip_sample_tokenizer(context_length: int = 32):
    """Picklable ``str -> LongTensor[L]`` with CLIP's BPE (open_clip), no padding: the token ids
    the open_clip backbones (``demo-clip``, ``tiny-openclip``, pretrained CLIPs) read."""
    import functools

    import open_clip

    from avalanche_mm.models.backbones.base import SampleTokenizer

    return SampleTokenizer(tokenize=functools.partial(open_clip.tokenize, context_length=context_length),
                           pad_token_id=0, eot_token_id=49407)


@register_benchmark("world-retrieval-stream", reference=True)
def world_retrieval_stream(
    *,
    num_phases: int = 5,
    pairs_per_combination: int = 6,
    reference_per_combination: int = 10,
    heldout_classes: int = 16,
    heldout_per_class: int = 4,
    seed: int = 0,
    world_seed: int = 0,
    image_size: int = 32,
    shapes: int = 6,
    colours: int = 6,
    textures: int = 4,
    sizes: int = 2,
    tokenizer: Optional[Callable[[str], torch.Tensor]] = None,
) -> BenchmarkBundle:
    """Procedural world, image-caption pair phases of new objects, per-phase test pairs, a
    reference split and a held-out zero-shot task (retrieval as a stream; Mod-X / CTP)."""
    from avalanche_mm.benchmarks.scenarios import retrieval_phases_scenario
    from avalanche_mm.benchmarks.world import _TEMPLATES, ProceduralWorld

    world = ProceduralWorld(seed=world_seed, image_size=image_size, shapes=shapes, colours=colours,
                            textures=textures, sizes=sizes)
    tok = tokenizer or clip_sample_tokenizer()
    combos = world.combinations("task")
    if num_phases > len(combos):
        raise ValueError(f"world-retrieval-stream: num_phases={num_phases} exceeds the {len(combos)} task objects.")
    train_combo = [j for j in range(len(combos)) for _ in range(pairs_per_combination)]
    train = world.generate([combos[j] for j in train_combo], modalities=("image", "text"),
                           tag=f"rs/{seed}/train").to_pair_dataset(tokenizer=tok)
    test = world.generate(combos, modalities=("image", "text"), tag=f"rs/{seed}/test").to_pair_dataset(tokenizer=tok)
    # deal objects into phases (same rule and seed as retrieval_phases_scenario), then give
    # each phase the test pairs of its own objects
    probe = retrieval_phases_scenario(train, {"all": test}, num_phases=num_phases, group_ids=train_combo, seed=seed)
    test_sets = {}
    for k, exp in enumerate(probe.train_stream):
        objs = sorted({train_combo[int(i)] for i in exp.dataset.targets})
        test_sets[f"phase{k}"] = test.subset(objs)
    scenario = retrieval_phases_scenario(train, test_sets, num_phases=num_phases, group_ids=train_combo,
                                         seed=seed, name="world-pairs",
                                         info={"world_seed": world_seed, "objects": len(combos)})
    ref = world.reference_samples(per_combination=reference_per_combination, modalities=("image", "text"))
    reference = ReferenceSet(
        images=ref.modalities["image"].float(), texts=list(ref.captions),
        fingerprint={"world": {"seed": world_seed, "image_size": image_size, "shapes": shapes, "colours": colours,
                               "textures": textures, "sizes": sizes}, "per_combination": reference_per_combination},
    )
    ref_combos = world.combinations("reference")
    pick = np.linspace(0, len(ref_combos) - 1, min(heldout_classes, len(ref_combos))).round().astype(int)
    classes = [ref_combos[i] for i in sorted(set(pick.tolist()))]
    held = world.generate([c for c in classes for _ in range(heldout_per_class)], modalities=("image",),
                          tag=f"rs/{seed}/zeroshot")
    bundle = BenchmarkBundle(
        name="world-retrieval-stream",
        scenario=scenario,
        class_names=None,
        reference=reference,
        modalities=("image", "text"),
        description=f"{num_phases} phases of image-caption pairs of new procedural objects "
        f"({len(combos)} objects, {pairs_per_combination} pairs each), per-phase test pairs",
    )
    bundle.zero_shot = {  # type: ignore[attr-defined]
        "images": held.modalities["image"].float(),
        "labels": torch.tensor([k for k in range(len(classes)) for _ in range(heldout_per_class)]),
        "prompts": [_TEMPLATES[1].format(world.describe(c)) for c in classes],
        "name": "world-reference-objects",
    }
    return bundle


# ---------------------------------------------------------------------------
# runner hooks
# ---------------------------------------------------------------------------
def is_retrieval_bundle(bundle) -> bool:
    """True for a benchmark of image-text pair phases (no classes, image and text)."""
    from avalanche_mm.strategies.mod_x import is_pair_bundle

    return is_pair_bundle(bundle)


def build_retrieval_model(backbone, bundle, model_cfg: Mapping[str, Any]):
    """A :class:`~avalanche_mm.models.RetrievalHead` over ``backbone`` (``model.freeze`` applied)."""
    from avalanche_mm.models.zero_shot import RetrievalHead

    head = RetrievalHead(backbone=backbone)
    _apply_freeze(head, backbone, model_cfg.get("freeze") or [])
    return head


def retrieval_metrics(prepared, model) -> List[Any]:
    """The metrics of a retrieval study: loss, the recall matrix, time, zero-shot on the
    held-out task (when the benchmark has one) and the probe's alignment and drift."""
    from avalanche.evaluation.metrics import loss_metrics

    from avalanche_mm.metrics import CrossModalAlignment, TrainingTime
    from avalanche_mm.metrics.retrieval_stream import RetrievalStreamMetric, ZeroShotHeldOut
    from avalanche_mm.strategies.finetune import find_backbone, logit_scale_of

    from .metrics import DriftFromInitial

    out: List[Any] = list(loss_metrics(epoch=True, stream=True))
    out += [RetrievalStreamMetric(ks=(1, 5, 10), shared_test_sets=prepared.bundle.shared_test_sets), TrainingTime()]
    backbone = find_backbone(prepared.initial_model)
    zs = getattr(prepared.bundle, "zero_shot", None) or getattr(prepared.bundle.scenario, "zero_shot", None)
    if zs is not None:
        out.append(ZeroShotHeldOut(zs["images"], zs["labels"], backbone.tokenize(zs["prompts"]), name=zs.get("name", "heldout")))
    ev = prepared.cfg["evaluation"]
    if ev["alignment"] and prepared.probe is not None:
        with torch.no_grad():
            scale = float(logit_scale_of(backbone))
        out.append(CrossModalAlignment(prepared.probe, ks=(1, 5), logit_scale=scale))
        out.append(DriftFromInitial(prepared.probe, logit_scale=scale))
    return out


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------
def recall_matrix_from_state(state: Mapping[str, Any], key: str) -> Optional[np.ndarray]:
    """The ``[phases done, phases]`` matrix of recall ``key`` (e.g. ``"i2t_R1"``) from a strategy's
    state (the stream-level ``RetrievalMatrix_<key>_PhaseNNN`` values of each row), or None."""
    rows = state.get("scalars") or []
    acc_rows = state.get("rows") or []
    # columns: the test experiences (one per phase, or the shared test sets)
    n = len(acc_rows[0]) if acc_rows and acc_rows[0] is not None else int(state.get("n_experiences") or 0)
    if not rows or not n:
        return None
    mat = np.full((len(rows), n), np.nan)
    found = False
    for t, sc in enumerate(rows):
        for i in range(n):
            v = sc.get(f"RetrievalMatrix_{key}_Phase{i:03d}")
            if v is not None:
                mat[t, i] = v
                found = True
    return mat if found else None


def _fmt(v) -> str:
    return "-" if v is None or v != v else f"{100 * v:.1f}"


def shared_summary_rows(states: Sequence[Mapping[str, Any]], test_names: Sequence[str]) -> List[List[str]]:
    """Shared test sets (Mod-X's protocol): one row per (strategy, test set) after the last phase,
    as Mod-X's tables: image-to-text and text-to-image R@1/5/10, then forgetting and BWT of the
    mean R@1 on that test set (:func:`~avalanche_mm.metrics.functional.retrieval_stream.shared_test_summary`
    on its column) and the zero-shot held-out accuracy."""
    from avalanche_mm.metrics.functional.retrieval_stream import shared_test_summary

    header = ["strategy", "method", "test set", "i2t R@1", "i2t R@5", "i2t R@10", "t2i R@1", "t2i R@5", "t2i R@10",
              "forgetting R@1", "BWT R@1", "zero-shot held-out"]
    out = [header]
    for st in states:
        last = (st.get("scalars") or [{}])[-1] if st.get("scalars") else {}
        r1 = [recall_matrix_from_state(st, k) for k in ("i2t_R1", "t2i_R1")]
        for j, name in enumerate(test_names):
            cells = [_fmt(last.get(f"RetrievalMatrix_{d}_R{k}_Phase{j:03d}")) for d in ("i2t", "t2i") for k in (1, 5, 10)]
            summ: Dict[str, float] = {}
            if r1[0] is not None and r1[1] is not None:
                col = 0.5 * (r1[0][:, [j]] + r1[1][:, [j]])
                try:
                    summ = shared_test_summary(col)
                except ValueError:
                    summ = {}
            out.append([st["strategy"], st["method"], name] + cells
                       + [_fmt(summ.get("forgetting")), _fmt(summ.get("bwt")), _fmt(last.get("ZeroShotHeldOut_Acc"))])
    return out


def retrieval_summary_rows(states: Sequence[Mapping[str, Any]]) -> List[List[str]]:
    """One row per strategy: final R@1 of the first phase, avg seen R@1, mean recall,
    forgetting, BWT, zero-shot held-out accuracy, intra-modal rotation (degrees, vs the initial model)."""
    header = ["strategy", "method", "R@1 phase 1 (last)", "R@1 avg seen", "mean recall", "forgetting R@1", "BWT R@1",
              "zero-shot held-out", "rotation img (deg)", "rotation txt (deg)"]
    out = [header]
    for st in states:
        last = (st.get("scalars") or [{}])[-1] if st.get("scalars") else {}
        rot_i, rot_t = last.get("DriftFromInit_rotation_image"), last.get("DriftFromInit_rotation_text")
        out.append([
            st["strategy"], st["method"], _fmt(last.get("RetrievalR1_FirstPhase")), _fmt(last.get("RetrievalR1_AvgSeen")),
            _fmt(last.get("RetrievalMeanRecall_AvgSeen")), _fmt(last.get("RetrievalR1_Forgetting")), _fmt(last.get("RetrievalR1_BWT")),
            _fmt(last.get("ZeroShotHeldOut_Acc")),
            "-" if rot_i is None else f"{rot_i:.1f}", "-" if rot_t is None else f"{rot_t:.1f}",
        ])
    return out


def retrieval_phenomena(states: Sequence[Mapping[str, Any]]) -> List[str]:
    """``[yes]/[no ]`` sentences: does each pair method keep more first-phase R@1 after the last
    phase than the ``contrastive-finetune`` strategy, with less intra-modal rotation (both towers)?"""
    last = {st["strategy"]: ((st.get("scalars") or [{}])[-1], st["method"]) for st in states if st.get("complete")}
    base = [n for n, (_, m) in last.items() if m == "contrastive-finetune"]
    if not base:
        return []
    b, _ = last[base[0]]
    out = []
    for name, (sc, method) in last.items():
        if name == base[0] or method not in ("mod-x", "ctp"):
            continue
        for key, what, better in (("RetrievalR1_FirstPhase", "first-phase R@1 (%)", "higher"),
                                  ("RetrievalR1_AvgAll" if "RetrievalR1_FirstPhase" not in sc else "-", "R@1 on the shared test sets (%)", "higher"),
                                  ("DriftFromInit_rotation_image", "image-space rotation (deg)", "lower"),
                                  ("DriftFromInit_rotation_text", "text-space rotation (deg)", "lower")):
            va, vb = sc.get(key), b.get(key)
            if va is None or vb is None:
                continue
            ok = va > vb if better == "higher" else va < vb
            k = 100.0 if "R1" in key else 1.0
            out.append(f"[{'yes' if ok else 'no '}] {name} {better} {what} than {base[0]}: {k * va:.1f} vs {k * vb:.1f}")
    return out


def _plot_first_phase(path: str, states, names, *, shared: bool = False) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency of the report
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for st in states:
        rows = st.get("rows") or []
        if not rows:
            continue
        axes[0].plot(range(1, len(rows) + 1), [100 * r[0] for r in rows], marker="o", label=st["strategy"])
        axes[1].plot(range(1, len(rows) + 1), [100 * np.nanmean(r if shared else r[: t + 1]) for t, r in enumerate(rows)],
                     marker="o", label=st["strategy"])
    axes[0].set_title(f"R@1 on {names[0]}" if shared else "R@1 on the first phase's test pairs")
    axes[1].set_title("R@1 averaged over the shared test sets" if shared else "R@1 averaged over the phases seen")
    for ax in axes:
        ax.set_xlabel("after phase")
        ax.set_ylabel("R@1 (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return os.path.basename(path)


def retrieval_report_section(out: str, cfg: Mapping[str, Any], env: Mapping[str, Any], states: Mapping[str, List],
                             plot_dir: Optional[str]) -> Tuple[List[str], List[str], List[str]]:
    """``(markdown lines, text lines, html parts)`` of the retrieval studies of a results folder:
    a summary table, every strategy's R@1 matrices (both directions) and a plot of the first
    phase's R@1 and the average over seen phases. Empty for classification studies."""
    from .report import md_table, text_table

    def html_table(rows):  # the report's HTML is rendered from its Markdown
        return ""

    md: List[str] = []
    text: List[str] = []
    htm: List[str] = []
    for sname in cfg.get("studies", {}):
        sts = states.get(sname, [])
        if not sts or not any(recall_matrix_from_state(st, "i2t_R1") is not None for st in sts):
            continue
        info = env.get("studies", {}).get(sname, {}) or {}
        names = info.get("experiences") or [f"phase{i}" for i in range(sts[0]["n_experiences"])]
        shared = info.get("test_protocol") == "shared" or any(st.get("test_protocol") == "shared" for st in sts)
        phases = info.get("phases") or (names if not shared else [f"phase{i}" for i in range(sts[0]["n_experiences"])])
        if shared:
            table = shared_summary_rows(sts, names)
            cap = f"{sname}: retrieval on the shared test sets (%, after the last phase)"
        else:
            table = retrieval_summary_rows(sts)
            cap = f"{sname}: retrieval as a stream (%, after the last phase)"
        md += [f"## {cap}", "", md_table(table), ""]
        text += [cap, text_table(table), ""]
        htm += [f"<h2>{cap}</h2>", html_table(table)]
        for st in sts:
            for key, label in (("i2t_R1", "image-to-text R@1"), ("t2i_R1", "text-to-image R@1")):
                mat = recall_matrix_from_state(st, key)
                if mat is None:
                    continue
                tab = [["after"] + list(names)] + [[phases[t]] + [_fmt(v) for v in row] for t, row in enumerate(mat)]
                md += [f"**{st['strategy']}**: {label} matrix R(t, i) (%)", "", md_table(tab), ""]
                htm += [f"<h4>{st['strategy']}: {label} (%)</h4>", html_table(tab)]
        lines = retrieval_phenomena(sts)
        if lines:
            md += ["### Phenomena (against contrastive fine-tuning)", ""] + [f"- {x}" for x in lines] + [""]
            text += ["Phenomena (against contrastive fine-tuning)"] + lines + [""]
            htm += ["<h3>Phenomena</h3><ul>"] + [f"<li>{x}</li>" for x in lines] + ["</ul>"]
        if plot_dir:
            fname = _plot_first_phase(os.path.join(plot_dir, f"{sname}_retrieval.png"), sts, names, shared=shared)
            if fname:
                md += [f"![retrieval R@1]({os.path.relpath(os.path.join(plot_dir, fname), out)})", ""]
                htm += [f'<img src="{os.path.relpath(os.path.join(plot_dir, fname), out)}" alt="retrieval R@1">']
    return md, text, htm


def retrieval_report(out: str, *, plots: Optional[bool] = None) -> Tuple[str, str]:
    """``(markdown, console text)`` of the retrieval studies of a results folder (empty strings
    when there are none); what :func:`~avalanche_mm.experiments.report.build_report` appends."""
    from .report import load_results

    cfg, env, states = load_results(out)
    do_plots = (cfg.get("report") or {}).get("plots", True) if plots is None else plots
    md, text, _ = retrieval_report_section(out, cfg, env, states, os.path.join(out, "plots") if do_plots else None)
    if not md:
        return "", ""
    return "\n" + "\n".join(md) + "\n", "\n" + "\n".join(text)


__all__ = [
    "retrieval_report",
    "clip_sample_tokenizer",
    "world_retrieval_stream",
    "is_retrieval_bundle",
    "build_retrieval_model",
    "retrieval_metrics",
    "recall_matrix_from_state",
    "retrieval_summary_rows",
    "shared_summary_rows",
    "retrieval_phenomena",
    "retrieval_report_section",
]
