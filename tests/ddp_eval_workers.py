"""Worker functions of the sharded-evaluation tests (importable by spawned processes)."""

from __future__ import annotations

import copy
import json

import torch
from avalanche.core import SupervisedPlugin

from avalanche_mm import distributed as D
from avalanche_mm.data.batch import MultimodalBatch

WORLD = {"seed": 0, "image_size": 32, "shapes": 3, "colours": 4, "textures": 2, "sizes": 2}
CONFIG = {
    "name": "ddp-eval",
    "seed": 0,
    "device": "cpu",
    "progress_bar": False,
    "loggers": [],
    "studies": {
        # fusion: accuracy, loss, accuracy matrix, every modality-imbalance metric (Shapley included)
        "av": {
            "benchmark": {
                "name": "demo-av",
                "params": {"world": {"seed": 1, "image_size": 16, "noise": {"image": 0.6}}, "num_classes": 4,
                           "num_experiences": 2, "train_per_class": 4, "test_per_class": 4},
            },
            "model": {"kind": "fusion", "name": "fusion", "params": {"fusion": "concat", "hidden": 16, "conv_channels": [4, 8]}},
            "training": {"epochs": 1, "batch_size": 8, "eval_batch_size": 3, "lr": 5e-3, "scheduler": "constant"},
            "evaluation": {"initial": False, "metrics": {"modality-imbalance": {"shapley": True, "contribution": True, "imbalance_index": True}}},
            "strategies": {"finetune": {}},
        },
        # CLIP with the zero-shot head: accuracy, loss, accuracy matrix (MTIL transfer/avg/last), alignment
        "clip": {
            "benchmark": {
                "name": "demo-mtil",
                "params": {"world": WORLD, "tasks": [{"name": "colours", "target": "colour"}, {"name": "shapes", "target": "shape"}],
                           "train_per_class": 2, "test_per_class": 2, "reference_per_combination": 1},
            },
            "model": {"kind": "clip", "backbone": "demo-clip", "pretrain": {"enabled": False}},
            "training": {"iterations": 2, "batch_size": 8, "eval_batch_size": 3, "lr": 3e-4, "warmup": 0},
            "evaluation": {"initial": True, "alignment": True, "probe_size": 8},
            "strategies": {"finetune": {}},
        },
        # image-text pairs: the recall matrix of the retrieval studies (in-batch similarities)
        "pairs": {
            "benchmark": {"name": "world-retrieval-stream",
                          "params": {"num_phases": 2, "pairs_per_combination": 1, "reference_per_combination": 1,
                                     "shapes": 3, "colours": 3, "textures": 2, "sizes": 2, "heldout_classes": 4, "heldout_per_class": 1}},
            "model": {"kind": "clip", "backbone": "demo-clip", "pretrain": {"enabled": False}},
            "training": {"iterations": 2, "batch_size": 8, "eval_batch_size": 3, "lr": 1e-4, "warmup": 0},
            "evaluation": {"initial": False},
            "strategies": {"finetune": {"method": "contrastive-finetune"}},
        },
    },
}
#: evaluated sizes of the test experiences: 7 (not a multiple of the global eval batch 3 nor of
#: the world 2; its last minibatch of 1 row is smaller than the world) and 1 (smaller than the world)
SIZES = (7, 1)


def _resize(stream, sizes):
    out = []
    for exp, n in zip(stream, sizes):
        e = copy.copy(exp)
        e._dataset = exp.dataset.subset(list(range(min(n, len(exp.dataset)))))
        out.append(e)
    return out


def _evaluate(cfg, prepared, mode: str):
    """Train (the same in both modes: DDP training, seeded) and evaluate the resized test stream
    after each experience with ``distributed.eval = mode``; rank 0 returns the metric values
    (``name@k``: after training experience k)."""
    from avalanche.training.plugins import EvaluationPlugin

    from avalanche_mm.experiments.config import strategy_training
    from avalanche_mm.experiments.progress import MetricCollector
    from avalanche_mm.experiments.runner import _metrics_for
    from avalanche_mm.experiments.state import derive_seed, seed_everything
    from avalanche_mm.strategies.registry import METHODS, BuildContext

    entry = prepared.cfg["strategies"]["finetune"]
    seed_everything(derive_seed(0, prepared.name, "build"))
    model = prepared.fresh_model()
    training = strategy_training(prepared.cfg, entry)
    collector = MetricCollector() if D.rank() == 0 else None  # Avalanche: loggers on rank 0 only
    evaluator = EvaluationPlugin(*_metrics_for(prepared, model), loggers=[collector] if collector else [])
    ctx = BuildContext(model=model, kind=prepared.kind, training=training, device=torch.device("cpu"), evaluator=evaluator,
                       plugins=[], bundle=prepared.bundle, seed=0, world_size=D.world_size())
    strategy = METHODS[entry["method"]].build(ctx, {k: v for k, v in entry.items() if k not in ("method", "training")})
    strategy.distributed_eval = mode
    rows = _RowCounter()
    strategy.plugins.append(rows)

    def count(module, args):  # every evaluation forward pass, the modality-ablation ones included
        if not module.training and rows.rows:
            from avalanche_mm.data.batch import batch_size

            rows.rows[-1] += batch_size(args[0])

    model.register_forward_pre_hook(count)
    scenario = prepared.bundle.scenario
    exps = _resize(scenario.test_stream, SIZES)
    if prepared.cfg["evaluation"]["initial"]:  # the baseline row (forward transfer, MTIL Transfer)
        strategy.eval(exps)
    values = {}
    # the CLIP study trains both experiences: the complete matrix gives MTIL Transfer/Avg/Last
    for k in range(len(scenario.train_stream) if prepared.kind == "clip" and prepared.cfg["evaluation"]["initial"] else 1):
        seed_everything(1 + k)
        strategy.train(scenario.train_stream[k], eval_streams=[])
        strategy.eval(exps)
        values.update({} if collector is None else {f"{name}@{k}": v for name, v in collector.values.items()})
        if collector is not None:
            collector.clear()
    out = {k: (float(v) if isinstance(v, (int, float)) else repr(v)) for k, v in values.items()}
    out["rows_forwarded"] = rows.rows
    return out


class _RowCounter(SupervisedPlugin):
    """Holds the rows this rank's evaluation forward passes ran on (counted by a hook on the
    model, one count per evaluated experience), and checks that per-row state a plugin keeps from ``before_eval_forward`` (here the targets
    of its rows), gathered with ``strategy.gather_eval_rows`` (as S-liPrompts and MoE-Adapters
    do), is the global minibatch's."""

    def __init__(self):
        super().__init__()
        self.rows = []
        self._mine = None

    def before_eval_exp(self, strategy, **kwargs):
        self.rows.append(0)

    def before_eval_forward(self, strategy, **kwargs):
        self._mine = strategy.mb_y.clone()

    def after_eval_iteration(self, strategy, **kwargs):
        assert torch.equal(strategy.gather_eval_rows(self._mine), strategy.mb_y)


def gather_case(rank, world, out):
    """all_gather_rows on a multimodal batch with a variable-length modality, uneven counts and a
    rank without rows: the result is the batch the collate builds from all rows."""
    full = MultimodalBatch(
        {"image": torch.arange(5 * 2, dtype=torch.float32).view(5, 2),
         "text": torch.tensor([[1, 2, 3], [4, 0, 0], [5, 6, 0], [7, 0, 0], [8, 9, 1]])},
        present={"image": torch.tensor([True, False, True, True, False])},
        lengths={"text": torch.tensor([3, 1, 2, 1, 3])}, pad_values={"text": 0},
    )
    for counts in ([3, 2], [5, 0], [1, 4]):
        lo = sum(counts[:rank])
        mine = full.select(slice(lo, lo + counts[rank])) if counts[rank] else full.select(slice(0, 1))  # placeholder
        if counts[rank]:  # re-pad the slice to its own longest row, as the collate of a slice does
            longest = int(mine.lengths["text"].max())
            mine = MultimodalBatch({"image": mine["image"], "text": mine["text"][:, :longest]}, present=mine.present,
                                   lengths=mine.lengths, pad_values=mine.pad_values)
        y = torch.arange(lo, lo + max(counts[rank], 1))
        got = D.all_gather_rows([mine, y, {"out": y.float()[:, None] * 2}], counts)
        assert torch.equal(got[0]["image"], full["image"]) and torch.equal(got[0]["text"], full["text"])
        assert torch.equal(got[0].present["image"], full.present["image"]) and torch.equal(got[0].lengths["text"], full.lengths["text"])
        assert torch.equal(got[1], torch.arange(5)) and torch.equal(got[2]["out"], torch.arange(5).float()[:, None] * 2)
    try:
        D.all_gather_rows(["not a tensor"], [1, 1])
    except D.DistributedError as err:
        assert "distributed.eval: replicated" in str(err)
    else:
        raise AssertionError("a string leaf must be refused")


def eval_case(rank, world, out):
    from avalanche_mm.experiments.config import validate_config
    from avalanche_mm.experiments.runner import prepare_study

    gather_case(rank, world, out)
    cfg = validate_config(copy.deepcopy(CONFIG))
    results = {}
    for name in cfg["studies"]:
        prepared = prepare_study(cfg, name, device=torch.device("cpu"), log=lambda *a, **k: None, progress=False)
        results[name] = {mode: _evaluate(cfg, prepared, mode) for mode in ("replicated", "sharded")}
    with open(f"{out}.{rank}", "w") as fh:  # rank 0: the metrics; every rank: the rows it evaluated
        json.dump(results, fh)


def fork(fn, world: int = 2, *args):
    """Run ``fn(rank, world, *args)`` in ``world`` forked processes (one process group).

    Forked, not spawned: the children inherit the modules this process imported (the runner,
    the strategies, Avalanche), which a spawned child would import again (~10 s each on busy cores).
    """
    import torch.multiprocessing as mp

    import ddp_workers as W

    import avalanche_mm.experiments.runner  # noqa: F401  (imported once, before forking)
    import avalanche_mm.strategies  # noqa: F401

    port = W._free_port()
    mp.start_processes(W._worker, args=(world, port, fn, args), nprocs=world, join=True, start_method="fork")
