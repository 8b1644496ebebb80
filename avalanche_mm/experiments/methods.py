"""The strategies a config can name, with their parameters and builders.

Each :class:`MethodSpec` declares the method's parameters as schema options
(validated before anything is built) and a ``build(ctx, params)`` that
returns a ready Avalanche strategy. The training recipe (optimizer,
schedule, step budget, label smoothing) comes from the study's ``training``
section through :class:`BuildContext`.
"""

from __future__ import annotations

from typing import Any, Dict

from avalanche_mm.schema import Opt
from avalanche_mm.strategies.registry import METHODS, BuildContext, MethodSpec, list_methods


# ---------------------------------------------------------------------------
# builders
# ---------------------------------------------------------------------------
def _build_zeroshot(ctx: BuildContext, p: Dict[str, Any]):
    from avalanche_mm.strategies.zeroshot import ZeroShot

    kw = ctx.base_kwargs()
    return ZeroShot(model=ctx.model, criterion=ctx.criterion(), plugins=list(ctx.plugins), **kw)


def _build_finetune(ctx: BuildContext, p: Dict[str, Any]):
    from avalanche_mm.strategies.finetune import FineTune

    return FineTune(
        model=ctx.model,
        optimizer=ctx.optimizer(),
        plugins=list(ctx.plugins),
        **ctx.schedule_kwargs(),
        **ctx.base_kwargs(),
    )


def _build_lwf(ctx: BuildContext, p: Dict[str, Any]):
    if ctx.kind == "clip":
        from avalanche_mm.strategies.clip_lwf import CLIPLwF

        return CLIPLwF(
            model=ctx.model,
            optimizer=ctx.optimizer(),
            alpha=p["alpha"],
            temperature=p["temperature"],
            both_directions=p["both_directions"],
            plugins=list(ctx.plugins),
            **ctx.schedule_kwargs(),
            **ctx.base_kwargs(),
        )
    from avalanche_mm.strategies import LwF

    return LwF(
        model=ctx.model,
        optimizer=ctx.optimizer(),
        criterion=ctx.criterion(),
        alpha=p["alpha"],
        temperature=p["temperature"],
        plugins=[ctx.schedule_plugin()] + list(ctx.plugins),
        **ctx.base_kwargs(),
    )


_POLICIES = ("experience_balanced", "class_balanced", "reservoir")


def _build_er(ctx: BuildContext, p: Dict[str, Any]):
    from avalanche_mm.strategies.plugins import ReplayPlugin
    from avalanche.training.storage_policy import (
        ClassBalancedBuffer,
        ExperienceBalancedBuffer,
        ReservoirSamplingBuffer,
    )

    from avalanche_mm.strategies import MultimodalSupervisedTemplate

    policy = {
        "experience_balanced": lambda: ExperienceBalancedBuffer(max_size=p["mem_size"], adaptive_size=True),
        "class_balanced": lambda: ClassBalancedBuffer(max_size=p["mem_size"], adaptive_size=True),
        "reservoir": lambda: ReservoirSamplingBuffer(max_size=p["mem_size"]),
    }[p["storage_policy"]]()
    replay = ReplayPlugin(
        mem_size=p["mem_size"],
        batch_size=ctx.training["batch_size"],
        batch_size_mem=p["batch_size_mem"] or ctx.training["batch_size"],
        storage_policy=policy,
    )
    strategy = MultimodalSupervisedTemplate(
        model=ctx.model,
        optimizer=ctx.optimizer(),
        criterion=ctx.criterion(),
        plugins=[ctx.schedule_plugin(), replay] + list(ctx.plugins),
        **ctx.base_kwargs(),
    )
    strategy.replay_plugin = replay
    return strategy


def _build_wiseft(ctx: BuildContext, p: Dict[str, Any]):
    from avalanche_mm.strategies.wiseft import WiSEFT

    return WiSEFT(
        model=ctx.model,
        optimizer=ctx.optimizer(),
        alpha=p["alpha"],
        reference=p["reference"],
        plugins=list(ctx.plugins),
        **ctx.schedule_kwargs(),
        **ctx.base_kwargs(),
    )


def _build_zscl(ctx: BuildContext, p: Dict[str, Any]):
    from avalanche_mm.strategies.zscl import ZSCL

    ref = getattr(ctx.bundle, "reference", None)
    if ref is None:
        raise ValueError(
            f"zscl needs a reference set (images and sentences), but benchmark "
            f"{getattr(ctx.bundle, 'name', '?')!r} provides none; use a benchmark with a "
            "reference split (e.g. world-mtil) or a real-data benchmark with reference_root."
        )
    images = ref.images
    texts = list(dict.fromkeys(ref.texts))  # a bank of distinct sentences
    if p["reference_size"] is not None:
        images = images[: p["reference_size"]]
    if p["reference_texts"] is not None:
        texts = texts[: p["reference_texts"]]
    return ZSCL(
        model=ctx.model,
        optimizer=ctx.optimizer(),
        reference_images=images,
        reference_texts=texts,
        image_weight=p["image_weight"],
        text_weight=p["text_weight"],
        temperature=p["temperature"],
        l2_weight=p["l2_weight"],
        we_every=p["we_every"],
        ref_batch_size=p["ref_batch_size"] or ctx.training["batch_size"],
        ref_text_batch_size=p["ref_text_batch_size"],
        text_features=p["text_features"],
        seed=ctx.seed,
        plugins=list(ctx.plugins),
        **ctx.schedule_kwargs(),
        **ctx.base_kwargs(),
    )


_LEGACY = {
    "zeroshot": MethodSpec(
        "zeroshot",
        "the pretrained model, never trained (zero-shot CLIP)",
        {},
        _build_zeroshot,
        trains=False,
        reference="Radford et al., ICML 2021",
    ),
    "finetune": MethodSpec(
        "finetune",
        "continual fine-tuning (Naive) with the MTIL recipe",
        {},
        _build_finetune,
        reference="baseline",
    ),
    "lwf": MethodSpec(
        "lwf",
        "Learning without Forgetting (CLIP: both-direction logit distillation from the task-start model)",
        {
            "alpha": Opt("float", 1.0, minimum=0.0, help="distillation weight"),
            "temperature": Opt("float", 2.0, minimum=1e-6, help="distillation temperature"),
            "both_directions": Opt("bool", True, help="CLIP: also distil the transposed logits"),
        },
        _build_lwf,
        reference="Li & Hoiem, TPAMI 2017",
    ),
    "er": MethodSpec(
        "er",
        "experience replay with an Avalanche storage policy",
        {
            "mem_size": Opt("int", 200, minimum=1, help="buffer size"),
            "batch_size_mem": Opt("int", None, nullable=True, minimum=1, help="replayed samples per step (default: batch_size)"),
            "storage_policy": Opt("str", "experience_balanced", choices=list(_POLICIES), help="buffer policy"),
        },
        _build_er,
        reference="Chaudhry et al., 2019",
    ),
    "wiseft": MethodSpec(
        "wiseft",
        "fine-tuning + WiSE-FT weight interpolation after each task",
        {
            "alpha": Opt("float", 0.8, minimum=0.0, maximum=1.0, help="weight of the fine-tuned weights"),
            "reference": Opt("str", "task_start", choices=["task_start", "initial"], help="interpolate towards"),
        },
        _build_wiseft,
        model_kinds=("clip", "fusion"),
        reference="Wortsman et al., CVPR 2022",
    ),
    "zscl": MethodSpec(
        "zscl",
        "ZSCL: reference-set distillation (both directions), L2 to task start, weight ensemble",
        {
            "image_weight": Opt("float", 1.0, minimum=0.0, help="weight of the image-side distillation"),
            "text_weight": Opt("float", 1.0, minimum=0.0, help="weight of the text-side distillation"),
            "temperature": Opt("float", 2.0, minimum=1e-6, help="distillation temperature"),
            "l2_weight": Opt("float", 1.0, minimum=0.0, help="L2 to the task's starting weights"),
            "we_every": Opt("int", 100, minimum=0, help="weight-ensemble period in iterations (0: off)"),
            "ref_batch_size": Opt("int", None, nullable=True, minimum=1, help="reference images per step (default: batch_size)"),
            "ref_text_batch_size": Opt("int", None, nullable=True, minimum=1, help="reference sentences per step (default: all)"),
            "reference_size": Opt("int", None, nullable=True, minimum=1, help="use only the first N reference images"),
            "reference_texts": Opt("int", None, nullable=True, minimum=1, help="use only the first N reference sentences"),
            "text_features": Opt("str", "teacher", choices=["teacher", "student"], help="sentence features of the student logits"),
        },
        _build_zscl,
        model_kinds=("clip",),
        reference="Zheng et al., ICCV 2023",
    ),
}


for _name, _spec in _LEGACY.items():
    METHODS.register(_name, _spec, source=__name__, summary=_spec.summary)

__all__ = ["BuildContext", "MethodSpec", "METHODS", "list_methods"]
