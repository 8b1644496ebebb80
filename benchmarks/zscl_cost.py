"""Cost of a ZSCL iteration relative to a fine-tuning iteration on the demo recipe.

The demo study's MTIL setting (``avalanche_mm/configs/default.yaml``: the procedural
world, ``demo-clip``, batch 32, ZSCL with reference batch 32, L2 1, WE every 5) is
trained task after task by continual fine-tuning and by ZSCL; each task's
iterations are timed from one ``after_training_iteration`` to the next (the
steady-state step, data loading included, per-task setup excluded). The methods
alternate per repeat (ABBA) and the script prints, one line per figure, the median
and range of the per-iteration times and of the per-repeat ratios, and the largest
relative difference of the ZSCL losses with and without the teacher-feature cache.
Target: ZSCL / fine-tune <= 1.3.

Usage: ``python benchmarks/zscl_cost.py [--repeats 5] [--iterations 40] [--tasks 2]``
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin

WORLD = {"seed": 0, "image_size": 32, "shapes": 4, "colours": 6, "textures": 3, "sizes": 2}
TASKS = [{"name": "textures", "target": "texture"}, {"name": "colours", "target": "colour"},
         {"name": "objects-a", "target": "combination", "num_classes": 8},
         {"name": "objects-b", "target": "combination", "num_classes": 8}]


class StepTimer(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.steps, self._last = [], None

    def before_training_exp(self, strategy, **kw):
        self._last = None

    def after_training_iteration(self, strategy, **kw):
        now = time.perf_counter()
        if self._last is not None:
            self.steps.append(now - self._last)
        self._last = now


class LossSpy(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.losses = []

    def after_backward(self, strategy, **kw):
        self.losses.append(float(strategy.loss.detach()))


def build(bundle, model, method, iterations, batch, plugins, cache=True):
    """``cache``: True (teacher features precomputed once), False (teacher forward every step),
    ``"legacy"`` (also no fused forward, autograd L2: the earlier implementation)."""
    from avalanche_mm.strategies import ZSCL, FineTune
    from avalanche_mm.strategies.finetune import make_clip_optimizer

    common = dict(model=model, optimizer=make_clip_optimizer(model, lr=2e-4), iterations=iterations, warmup=4,
                  label_smoothing=0.2, train_mb_size=batch, plugins=plugins,
                  evaluator=EvaluationPlugin(loggers=[]))
    if method == "finetune":
        return FineTune(**common)
    ref = bundle.reference
    return ZSCL(reference_images=ref.images, reference_texts=list(dict.fromkeys(ref.texts)), we_every=5,
                l2_weight=1.0, temperature=2.0, ref_batch_size=batch, cache_teacher_images=cache is True,
                precompute_teacher_images=cache is True, fused_forward=cache != "legacy",
                fast_l2=cache != "legacy", **common)


def run(bundle, model, method, iterations, batch, tasks, cache=True):
    timer, spy = StepTimer(), LossSpy()
    torch.manual_seed(0)
    strat = build(bundle, copy.deepcopy(model), method, iterations, batch, [timer, spy], cache)
    for exp in list(bundle.scenario.train_stream)[:tasks]:
        strat.train(exp)
    return statistics.median(timer.steps), spy.losses


def main():
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    torch.set_flush_denormal(True)

    from avalanche_mm.benchmarks.catalog import demo_mtil
    from avalanche_mm.models import build_backbone
    from avalanche_mm.models.build import clip_classifier

    bundle = demo_mtil(world=WORLD, tasks=TASKS, train_per_class=32, test_per_class=16, reference_per_combination=20)
    model = clip_classifier(build_backbone("demo-clip", seed=0), bundle, {"freeze": ["logit_scale"]})
    # equality of the losses with and without the teacher-feature cache
    _, cached = run(bundle, model, "zscl", 10, args.batch_size, 1, cache=True)
    _, plain = run(bundle, model, "zscl", 10, args.batch_size, 1, cache=False)
    rel = max(abs(a - b) / max(1.0, abs(b)) for a, b in zip(cached, plain))
    run(bundle, model, "finetune", 5, args.batch_size, 1)  # warm-up

    modes = {"zscl": True, "zscl-nocache": False, "zscl-legacy": "legacy"}
    times = {k: [] for k in ["finetune", *modes]}
    ratios = {k: [] for k in modes}
    for r in range(args.repeats):
        order = ["finetune", *modes]
        if r % 2:
            order.reverse()
        t = {}
        for which in order:
            method = "finetune" if which == "finetune" else "zscl"
            t[which], _ = run(bundle, model, method, args.iterations, args.batch_size, args.tasks,
                              cache=modes.get(which, True))
            times[which].append(t[which])
        for k in modes:
            ratios[k].append(t[k] / t["finetune"])

    def fig(name, xs, unit="", scale=1.0):
        print(f"{name}: median {statistics.median(xs) * scale:.3f}{unit} (range {min(xs) * scale:.3f}-"
              f"{max(xs) * scale:.3f}, {len(xs)} interleaved repeats)")

    print(f"# demo recipe: demo-clip, batch {args.batch_size}, {args.tasks} tasks x {args.iterations} iterations, "
          f"threads={torch.get_num_threads()}")
    fig("fine-tune iteration", times["finetune"], " ms", 1e3)
    fig("ZSCL iteration (default + teacher features precomputed)", times["zscl"], " ms", 1e3)
    fig("ZSCL iteration (teacher forward every step)", times["zscl-nocache"], " ms", 1e3)
    fig("ZSCL iteration (earlier implementation: 2 forwards, autograd L2, no cache)", times["zscl-legacy"], " ms", 1e3)
    fig("ZSCL / fine-tune iteration ratio", ratios["zscl"])
    fig("ZSCL (teacher every step) / fine-tune iteration ratio", ratios["zscl-nocache"])
    fig("ZSCL (earlier implementation) / fine-tune iteration ratio", ratios["zscl-legacy"])
    print(f"ZSCL losses cached vs uncached, max relative difference over 10 steps: {rel:.2e}")


if __name__ == "__main__":
    main()
