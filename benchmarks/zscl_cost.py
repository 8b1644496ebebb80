"""Cost of a ZSCL iteration relative to a fine-tuning iteration on the demo recipe.

The demo study's MTIL setting (``avalanche_mm/configs/default.yaml``: the procedural
world, ``demo-clip``, batch 32, ZSCL with reference batch 32, L2 1, WE every 5) is
trained task after task by continual fine-tuning (``FineTune`` with the recipe's
optimizer, as a user writes it) and by ZSCL; each task's iterations are timed from one
``after_training_iteration`` to the next (the steady-state step, data loading and the
periodic weight-ensemble merges included, per-task setup excluded) and averaged per
run. The methods alternate per repeat (ABBA) and the script prints, one line per
figure, the median and range over the repeats of the per-iteration times (wall clock,
and CPU time of the training thread, which a loaded shared machine disturbs less) and
of the per-repeat ratios, and the largest relative difference of the ZSCL losses
between the default (fused passes, teacher features precomputed) and the plain
computation (separate passes, autograd L2, teacher forward every step).
Target: ZSCL / fine-tune <= 1.3.

``--parts`` also prints where an iteration's time goes (phases between the strategy's
callbacks, and the ZSCL plugin's own work), in ms per iteration.

``--noise`` runs the default ZSCL twice, as two identical arms, and prints their ratio: how
far apart two medians of the same code land on this machine.

``--floor`` adds ZSCL with the reference-set distillation only (L2 weight 0, no weight
ensemble): the work the method cannot skip (a second image batch through the student,
forward and backward), so its ratio is the floor of any ZSCL implementation on this model.

The OpenMP wait policy changes the fine-tuning baseline itself (measured on 2 cores: 19-20 ms
per iteration with libgomp's default spin-wait, 36-48 ms with ``OMP_WAIT_POLICY=PASSIVE``,
which ``import avalanche_mm`` before torch and the ``avalanche-mm`` command set), and with it
the ratio; the header line prints the policy and the thread count, and ``--threads`` sets the
latter. Compare ratios only between runs with the same header.

Usage: ``python benchmarks/zscl_cost.py [--repeats 5] [--iterations 40] [--tasks 2] [--threads N]
[--parts] [--noise] [--floor]``
"""

from __future__ import annotations

import argparse
import copy
import os
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

#: ZSCL variants: constructor overrides of the defaults
MODES = {
    "zscl": {},  # what a user gets: fused passes, fast L2 (embedding rows looked up), teacher features precomputed
    "zscl-teacher": {"precompute_teacher_images": False},  # teacher image forward every step
    "zscl-dense-l2": {"sparse_embedding_l2": False},  # the token embedding's L2 and WE over all rows
    "zscl-plain": {"precompute_teacher_images": False, "fused_forward": False, "fast_l2": False},
}
#: ``--floor``: the reference-set distillation alone (what no ZSCL implementation can skip)
FLOOR = {"l2_weight": 0.0, "we_every": 0}
LABELS = {
    "finetune": "fine-tune",
    "zscl": "ZSCL (default: fused passes, teacher features precomputed)",
    "zscl-dense-l2": "ZSCL (token embedding's L2 and WE merge over all rows)",
    "zscl-teacher": "ZSCL (teacher forward every step)",
    "zscl-plain": "ZSCL (plain: separate passes, autograd L2, teacher every step)",
    "zscl-floor": "ZSCL distillation only (no L2, no WE: the floor)",
}
# phases between the timer's callbacks (the timer is the last plugin: a phase ending at
# callback X includes the other plugins' X work)
PHASES = [("before_forward", "data + lr + reference draw"), ("after_forward", "forward"),
          ("before_backward", "loss (criterion + ZSCL terms)"), ("after_backward", "backward (+ L2 gradient)"),
          ("after_update", "optimizer step + zero_grad"), ("after_training_iteration", "end of iteration (WE merge)")]


class StepTimer(SupervisedPlugin):
    """Per-step wall and thread-CPU times; with ``phases``, the time between callbacks."""

    def __init__(self, phases: bool = False):
        super().__init__()
        self.wall, self.cpu, self.parts = [], [], {k: [] for k, _ in PHASES}
        self._last = None
        self._phase_t = None
        if phases:
            for name, _ in PHASES[:-1]:
                setattr(self, name, self._mark(name))

    def _mark(self, name):
        def mark(strategy, **kw):
            now = time.perf_counter()
            if self._phase_t is not None:
                self.parts[name].append(now - self._phase_t)
            self._phase_t = now
        return mark

    def before_training_exp(self, strategy, **kw):
        self._last = self._phase_t = None

    def after_training_iteration(self, strategy, **kw):
        now, cpu = time.perf_counter(), time.thread_time()
        if self._phase_t is not None and self._last is not None:
            self.parts["after_training_iteration"].append(now - self._phase_t)
        if self._last is not None:
            self.wall.append(now - self._last[0])
            self.cpu.append(cpu - self._last[1])
        self._last = (now, cpu)
        self._phase_t = now


class LossSpy(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.losses = []

    def after_backward(self, strategy, **kw):
        self.losses.append(float(strategy.loss.detach()))


def build(bundle, model, method, iterations, batch, plugins, overrides=None):
    from avalanche_mm.strategies import ZSCL, FineTune
    from avalanche_mm.strategies.finetune import make_clip_optimizer

    common = dict(model=model, optimizer=make_clip_optimizer(model, lr=2e-4), iterations=iterations, warmup=4,
                  label_smoothing=0.2, train_mb_size=batch, plugins=plugins,
                  evaluator=EvaluationPlugin(loggers=[]))
    if method == "finetune":
        return FineTune(**common)
    ref = bundle.reference
    kwargs = dict(we_every=5, l2_weight=1.0, temperature=2.0, ref_batch_size=batch)
    kwargs.update(overrides or {})
    return ZSCL(reference_images=ref.images, reference_texts=list(dict.fromkeys(ref.texts)), **kwargs, **common)


class _PluginClock:
    """Wall time of some ZSCL plugin methods (wrapped on the instance)."""

    NAMES = {"_draw": "reference draw", "distillation": "distillation losses (teacher lookups, KD)",
             "_l2_direct": "L2 value (theta - theta_start, norms)", "after_backward": "L2 gradient add",
             "_merge": "WE merge (per merge)"}

    def __init__(self, plugin):
        self.times = {k: [] for k in self.NAMES}
        for name in self.NAMES:
            orig = getattr(plugin, name)

            def timed(*a, _orig=orig, _out=self.times[name], **k):
                t = time.perf_counter()
                r = _orig(*a, **k)
                _out.append(time.perf_counter() - t)
                return r

            setattr(plugin, name, timed)


def demo_setup():
    """``(bundle, model)``: the demo recipe's MTIL world and ``demo-clip`` classifier."""
    from avalanche_mm.benchmarks.catalog import demo_mtil
    from avalanche_mm.models import build_backbone
    from avalanche_mm.models.build import clip_classifier

    bundle = demo_mtil(world=WORLD, tasks=TASKS, train_per_class=32, test_per_class=16, reference_per_combination=20)
    model = clip_classifier(build_backbone("demo-clip", seed=0), bundle, {"freeze": ["logit_scale"]})
    return bundle, model


def omp_policy() -> str:
    """The OpenMP wait policy this process runs under (read by the runtime when torch loaded)."""
    policy = os.environ.get("OMP_WAIT_POLICY")
    spin = os.environ.get("GOMP_SPINCOUNT")
    text = f"OMP_WAIT_POLICY={policy}" if policy else "OMP_WAIT_POLICY unset (libgomp: spin, then sleep)"
    return text + (f", GOMP_SPINCOUNT={spin}" if spin else "")


def run(bundle, model, which, iterations, batch, tasks, parts=False):
    timer, spy = StepTimer(phases=parts), LossSpy()
    torch.manual_seed(0)
    method = "finetune" if which == "finetune" else "zscl"
    strat = build(bundle, copy.deepcopy(model), method, iterations, batch, [timer, spy], MODES.get(which))
    clock = _PluginClock(strat.zscl_plugin) if parts and method == "zscl" else None
    for exp in list(bundle.scenario.train_stream)[:tasks]:
        strat.train(exp)
    out = {"wall": statistics.fmean(timer.wall), "cpu": statistics.fmean(timer.cpu), "losses": spy.losses}
    if parts:
        out["parts"] = {k: statistics.fmean(v) for k, v in timer.parts.items() if v}
        if clock is not None:
            n = len(timer.wall) + tasks  # every iteration, the timed ones and each task's first
            out["plugin"] = {k: (sum(v) / n if k != "_merge" else statistics.median(v)) for k, v in clock.times.items() if v}
    return out


def main():
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--floor", action="store_true",
                    help="also run ZSCL with the reference distillation only (no L2, no WE): the method's floor")
    ap.add_argument("--parts", action="store_true", help="also print where the time of an iteration goes")
    ap.add_argument("--noise", action="store_true",
                    help="also run the default ZSCL as a second, identical arm and print the ratio of the "
                         "two (the measurement's noise floor)")
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    if args.threads is not None:
        if args.threads < 1:
            ap.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)

    bundle, model = demo_setup()
    # the default's losses against the plain computation (same data, same weights)
    fast = run(bundle, model, "zscl", 10, args.batch_size, 1)["losses"]
    plain = run(bundle, model, "zscl-plain", 10, args.batch_size, 1)["losses"]
    rel = max(abs(a - b) / max(1.0, abs(b)) for a, b in zip(fast, plain))
    run(bundle, model, "finetune", 5, args.batch_size, 1)  # warm-up

    if args.floor:
        MODES["zscl-floor"] = dict(FLOOR)
    if args.noise:
        MODES["zscl-again"] = dict(MODES["zscl"])
        LABELS["zscl-again"] = "ZSCL (default, second identical arm)"
    names = ["finetune", *MODES]
    res = {k: [] for k in names}
    for r in range(args.repeats):
        order = names if r % 2 == 0 else names[::-1]
        for which in order:
            res[which].append(run(bundle, model, which, args.iterations, args.batch_size, args.tasks, args.parts))

    def fig(name, xs, unit="", scale=1.0):
        print(f"{name}: median {statistics.median(xs) * scale:.3f}{unit} (range {min(xs) * scale:.3f}-"
              f"{max(xs) * scale:.3f}, {len(xs)} interleaved repeats)")

    print(f"# demo recipe: demo-clip, batch {args.batch_size}, {args.tasks} tasks x {args.iterations} iterations, "
          f"threads={torch.get_num_threads()}, {omp_policy()}; per-iteration means (WE merges included)")
    for k in names:
        fig(f"{LABELS[k]} iteration", [x["wall"] for x in res[k]], " ms", 1e3)
    for k in MODES:
        fig(f"{LABELS[k]} / fine-tune iteration ratio",
            [z["wall"] / f["wall"] for z, f in zip(res[k], res["finetune"])])
    fig("ZSCL (default) / fine-tune iteration ratio, CPU time of the training thread",
        [z["cpu"] / f["cpu"] for z, f in zip(res["zscl"], res["finetune"])])
    if args.noise:
        fig("noise floor: ZSCL (default) second identical arm / first arm iteration ratio",
            [b["wall"] / a["wall"] for a, b in zip(res["zscl"], res["zscl-again"])])
    print(f"ZSCL losses default vs plain computation, max relative difference over 10 steps: {rel:.2e}")
    if args.parts:
        print("# where the time goes, ms per iteration (median over repeats of per-run means)")
        for key, label in PHASES:
            row = [statistics.median([x["parts"][key] for x in res[k]]) * 1e3 for k in ("finetune", "zscl")]
            print(f"phase {label}: fine-tune {row[0]:.2f} ms, ZSCL {row[1]:.2f} ms, difference {row[1] - row[0]:+.2f} ms")
        for key, label in _PluginClock.NAMES.items():
            xs = [x["plugin"][key] for x in res["zscl"] if key in x.get("plugin", {})]
            if xs:
                print(f"ZSCL plugin, {label}: {statistics.median(xs) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
