"""AV-CIL: audio-visual class-incremental learning (Pian et al., ICCV 2023).

Model: :class:`~avalanche_mm.models.fusion.AVCILNet` (``model.name: av-cil``),
audio-guided spatial and temporal attention over pre-extracted VideoMAE tokens,
an AudioMAE vector, a fused feature ``h_a + h_v`` and a class-incremental head.

Loss on a minibatch of current samples and a minibatch of exemplars (the
released ``ours/train_incremental_ours.py``; ``step`` = experience index):

- step 0: cross-entropy over the seen classes, nothing else;
- step > 0:

  * ``L_CE``: current rows' CE over the *current* classes' logits, exemplar
    rows' CE over the *old* classes' logits, averaged by row counts
    (``ce="split"``, the code; ``ce="joint"``: CE over all seen classes);
  * ``L_KD = sum over old tasks t of T^2 KL(softmax(z_old[:, C_t]/T) ||
    softmax(z[:, C_t]/T))`` (batch mean, every row, T = 2);
  * ``lambda_I * L_I``: instance audio-visual InfoNCE, rows of
    ``norm(h_a) norm(h_v)^T / tau`` against the diagonal (tau = 0.05, audio -> visual);
  * ``lambda_C * L_C``: class-aware audio-visual contrastive,
    ``-mean_i mean_j [y_i = y_j] log softmax_j(norm(h_a) norm(h_v)^T / tau)_ij``
    (``class_contrastive="code"``; ``"paper"``: divided by the number of
    positives instead of the batch size, Eq. 7 of the paper);
  * ``lam * L_S + (1 - lam) * L_T``: KL(old || new) of the spatial (over S) and
    temporal (over T) attention distributions of every channel, on the exemplar
    rows, summed and divided by the number of exemplars (lam = 0.5).

The old model is the model after the previous experience (frozen). Exemplars:
class-balanced random memory, ``memory // seen classes`` per class, shrunk as
classes arrive (the code's ``exemplarLoader``) = Avalanche's
``ClassBalancedBuffer(adaptive_size=True)``; one exemplar minibatch is drawn
with every current minibatch (the code's ``zip(train_loader, cycle(exemplar_loader))``).
Protocols (``run_incremental_ours.sh``): AVE 28 classes / 7 per step, memory 340,
lambda_I 0.5; Kinetics-Sounds 30 / 6, memory 500, lambda_I 0.1; VGGSound100
100 / 10, memory 1500, lambda_I 0.1; lambda_C 1, 200 epochs, Adam lr 1e-3,
weight decay 1e-4, batch 256 + 128 exemplars.

Model selection: the code keeps the epoch with the best *validation* accuracy of each
step; the runner keeps the last unless the run adds :class:`BestValidEpochPlugin`
(``plugins: [best-valid-epoch]``, the avcil recipes do), which also makes that epoch the
old model. The code's growing classifier: :class:`IncrementalHeadPlugin` (AV-CIL's own;
``plugins: [incremental-head]`` for the other strategies). Deviation: attention maps
are clamped at 1e-12 before the log of the KL (the code's ``.log()`` can give ``-inf``).

Under ``torchrun`` (docs/scaling.md): the memory is identical on every rank (the storage
policy's choices follow the aligned generators); ``mem_batch_size`` is the exemplar count
of the *global* batch, drawn identically on every rank and dealt round-robin; the
instance and class-aware contrastive terms are computed over the global batch (this
rank's audio rows against every rank's visual features, gathered with their gradient,
labels gathered), not per shard as ``DistributedDataParallel`` on the released code
would - so the step is the 1-process step (exact with equal shards: batch and exemplar
counts multiples of the number of processes).

:class:`ExemplarReplayPlugin` (the memory + exemplar minibatches, also used by
SAMM), :class:`AVCILPlugin` (the losses) and :class:`AVCIL` (the strategy).
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Dict, List, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from torch import Tensor, nn

from avalanche_mm import distributed as _dist
from avalanche_mm.data.batch import batch_size as batch_rows
from avalanche_mm.data.batch import cat_batches, to_device
from avalanche_mm.registry import Range
from avalanche_mm.strategies.finetune import FineTune
from avalanche_mm.strategies.registry import BuildContext, CheckContext, register_method, register_plugin
from avalanche_mm.strategies.template import resolve_collate

from .er import STORAGE_POLICIES as POLICIES, make_storage_policy  # noqa: E402  (one storage-policy factory)


# ---------------------------------------------------------------------------
# the loss terms, as pure functions
# ---------------------------------------------------------------------------
def split_cross_entropy(logits: Tensor, y: Tensor, n_current: int, new_classes: Sequence[int], old_classes: Sequence[int]) -> Tensor:
    """AV-CIL's CE: current rows over the new classes' logits, exemplar rows over the old ones',
    ``(n_cur * CE_cur + n_ex * CE_ex) / (n_cur + n_ex)``.

    :param logits: ``[B, C]``; rows ``[:n_current]`` are current samples, the rest exemplars.
    :param y: ``[B]`` global class ids.
    :param n_current: number of current rows.
    :param new_classes: class ids of the current experience.
    :param old_classes: class ids of earlier experiences.
    """
    parts, counts = [], []
    for rows, classes in ((slice(0, n_current), new_classes), (slice(n_current, None), old_classes)):
        z, t = logits[rows], y[rows]
        if z.shape[0] == 0:
            continue
        cols = torch.as_tensor(sorted(int(c) for c in classes), device=z.device, dtype=torch.long)
        lookup = torch.full((logits.shape[1],), -1, dtype=torch.long, device=z.device)
        lookup[cols] = torch.arange(len(cols), device=z.device)
        local = lookup[t.long()]
        if bool((local < 0).any()):  # a label outside its column set (blurry streams): joint CE for those rows
            raise ValueError(
                "split_cross_entropy: some labels are not among the classes of their part "
                f"(labels {sorted(set(t[local < 0].tolist()))}, classes {cols.tolist()}); use ce='joint'."
            )
        parts.append(F.cross_entropy(z[:, cols], local))
        counts.append(z.shape[0])
    return sum(p * c for p, c in zip(parts, counts)) / sum(counts)


def task_distillation(logits: Tensor, old_logits: Tensor, task_classes: Sequence[Sequence[int]], temperature: float = 2.0) -> Tensor:
    """``sum_t T^2 KL(softmax(z_old[:, C_t]/T) || softmax(z[:, C_t]/T))`` (batch mean); 0 without old tasks."""
    loss = logits.new_zeros(())
    for classes in task_classes:
        cols = torch.as_tensor(sorted(int(c) for c in classes), device=logits.device, dtype=torch.long)
        soft = F.softmax(old_logits[:, cols] / temperature, dim=1)
        logp = F.log_softmax(logits[:, cols] / temperature, dim=1)
        loss = loss + F.kl_div(logp, soft, reduction="batchmean") * temperature**2
    return loss


def instance_contrastive(audio: Tensor, visual: Tensor, temperature: float = 0.05, *,
                         positives: Optional[Tensor] = None) -> Tensor:
    """InfoNCE of ``norm(a) norm(v)^T / tau`` against the diagonal (audio -> visual).

    :param positives: the column of each audio row's own visual feature when ``visual``
        holds more rows than ``audio`` (the global batch under ``torchrun``); default the diagonal.
    """
    score = F.normalize(audio, dim=-1) @ F.normalize(visual, dim=-1).t() / temperature
    labels = torch.arange(score.shape[0], device=score.device) if positives is None else positives.to(score.device)
    return F.cross_entropy(score, labels)


def class_contrastive(audio: Tensor, visual: Tensor, y: Tensor, temperature: float = 0.05, variant: str = "code", *,
                      y_visual: Optional[Tensor] = None) -> Tensor:
    """Class-aware audio-visual contrastive loss (``variant`` ``"code"`` or ``"paper"``, module docstring).

    :param y_visual: the labels of ``visual``'s rows when they are not ``y`` (the global batch
        under ``torchrun``).
    """
    yv = y if y_visual is None else y_visual.to(y.device)
    same = (y.view(-1, 1) == yv.view(1, -1)).to(audio.dtype)
    logp = F.log_softmax(F.normalize(audio, dim=-1) @ F.normalize(visual, dim=-1).t() / temperature, dim=-1)
    if variant == "code":
        return -(logp * same).mean(-1).mean()
    if variant == "paper":
        return -(((logp * same).sum(-1) + 1e-6) / (same.sum(-1) + 1e-6)).mean()
    raise ValueError(f"class_contrastive variant must be 'code' or 'paper', got {variant!r}.")


def attention_distillation(spatial: Tensor, old_spatial: Tensor, temporal: Tensor, old_temporal: Tensor, lam: float = 0.5) -> Tensor:
    """``lam * KL_S + (1 - lam) * KL_T`` of the exemplar rows' attention maps, each summed over
    every (frame, channel) distribution and divided by the number of rows.

    :param spatial: ``[N, T, S, D]`` (softmax over S) of the current model; ``old_spatial`` the old model's.
    :param temporal: ``[N, T, D]`` (softmax over T); ``old_temporal`` the old model's.
    """
    n = spatial.shape[0]
    if n == 0:
        return spatial.new_zeros(())
    s = spatial.transpose(2, 3).reshape(-1, spatial.shape[2])
    so = old_spatial.transpose(2, 3).reshape(-1, old_spatial.shape[2])
    t = temporal.transpose(1, 2).reshape(-1, temporal.shape[1])
    to = old_temporal.transpose(1, 2).reshape(-1, old_temporal.shape[1])
    ks = F.kl_div(s.clamp_min(1e-12).log(), so, reduction="sum") / n
    kt = F.kl_div(t.clamp_min(1e-12).log(), to, reduction="sum") / n
    return lam * ks + (1.0 - lam) * kt


# ---------------------------------------------------------------------------
# exemplar memory + exemplar minibatches (shared with SAMM)
# ---------------------------------------------------------------------------
class ExemplarReplayPlugin(SupervisedPlugin):
    """Exemplar memory through an Avalanche storage policy, and one exemplar minibatch
    appended to every training minibatch.

    After each experience the policy's ``post_adapt`` updates the buffer, whose samples are
    then copied (so the memory is self-contained and checkpoints). Before every training
    forward, ``mem_batch_size`` exemplars drawn at random are collated with the buffer's
    collate and appended to ``strategy.mbatch``: rows ``[:n_current]`` are current samples,
    the rest exemplars (``replay_index`` gives their positions in :attr:`samples`).

    :param mem_size: memory size (samples).
    :param mem_batch_size: exemplars per (global) minibatch; under ``torchrun`` each rank
        appends its round-robin share of one draw made identically on every rank.
    :param storage_policy: ``"class_balanced"`` (random per class, shrinking; AV-CIL),
        ``"experience_balanced"`` or ``"reservoir"``.
    """

    #: the last minibatch's rows (rank-local under torchrun; not compared between ranks)
    ddp_transient = ("replay_index", "n_current")

    def __init__(self, *, mem_size: int = 200, mem_batch_size: int = 32, storage_policy: str = "class_balanced"):
        super().__init__()
        for name, v in (("mem_size", mem_size), ("mem_batch_size", mem_batch_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}.")
        self.mem_size, self.mem_batch_size = mem_size, mem_batch_size
        self.storage_policy_name = storage_policy
        self.storage_policy = make_storage_policy(storage_policy, mem_size)
        self.samples: List[tuple] = []
        self.collate = None
        self.n_current: Optional[int] = None
        self.replay_index: Optional[Tensor] = None

    def after_training_exp(self, strategy, **kwargs):
        self.storage_policy.post_adapt(strategy, strategy.experience)
        data = self.storage_policy.buffer
        self.collate = resolve_collate(data, strategy)
        self.samples = [tuple(data[i]) for i in range(len(data))]

    def before_forward(self, strategy, **kwargs):
        mb = strategy.mbatch
        self.n_current = batch_rows(mb[0])
        self.replay_index = None
        if not self.samples:
            return
        # mem_batch_size exemplars per *global* batch: every rank draws the same permutation (the
        # same seeded generator state, the same memory) and takes its round-robin share, so the
        # ranks replay different exemplars and together those of a 1-process run
        k = min(self.mem_batch_size, len(self.samples))
        idx = _dist.shard(torch.randperm(len(self.samples))[:k])
        if idx.numel() == 0:
            return
        rows = [self.samples[int(i)] for i in idx]
        batch = list(self.collate(rows)) if self.collate is not None else list(torch.utils.data.default_collate(rows))
        batch = to_device(batch, strategy.device)
        strategy.mbatch = [cat_batches([mb[j], batch[j]]) for j in range(3)] + list(mb[3:])
        self.replay_index = idx


# ---------------------------------------------------------------------------
# the class-incremental head (any strategy on the av-cil network)
# ---------------------------------------------------------------------------
def _unwrap(model: nn.Module) -> nn.Module:
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


class IncrementalHeadPlugin(SupervisedPlugin):
    """The released code's growing classifier for any strategy on a model with
    ``set_active_classes`` and ``reset_classes`` (:class:`~avalanche_mm.models.fusion.AVCILNet`):
    at each experience the rows of arriving classes get a fresh initialisation
    (``incremental_classifier``) and only the seen classes have logits, in training
    and evaluation. Its baselines (fine-tuning, LwF, iCaRL, ...) grow the head the same
    way as AV-CIL; on another model this plugin does nothing. Config: ``plugins:
    [incremental-head]`` (every strategy of the run); :class:`AVCIL` wires it itself.
    """

    def __init__(self):
        super().__init__()
        self.seen_classes: List[int] = []

    @staticmethod
    def _target(strategy) -> Optional[nn.Module]:
        model = _unwrap(strategy.model)
        return model if hasattr(model, "set_active_classes") and hasattr(model, "reset_classes") else None

    def _acts(self, strategy) -> bool:  # one such plugin per strategy acts (AV-CIL's own, else the first)
        first = next((p for p in strategy.plugins if isinstance(p, IncrementalHeadPlugin)), self)
        return first is self

    def before_training_exp(self, strategy, **kwargs):
        model = self._target(strategy)
        if model is None or not self._acts(strategy):
            return
        current = sorted(int(c) for c in strategy.experience.classes_in_this_experience)
        arriving = sorted(set(current) - set(self.seen_classes))
        if self.seen_classes:  # the first step builds a fresh model in the code: nothing to reset
            model.reset_classes(arriving)
        self.seen_classes = sorted(set(self.seen_classes) | set(current))
        model.set_active_classes(self.seen_classes)

    def before_eval_exp(self, strategy, **kwargs):
        model = self._target(strategy)
        if model is not None and self.seen_classes and self._acts(strategy):
            model.set_active_classes(self.seen_classes)


class _PassiveHead(IncrementalHeadPlugin):
    """AV-CIL's marker in its strategy's plugins: the AV-CIL plugin grows the head itself."""

    def before_training_exp(self, strategy, **kwargs):
        pass

    def before_eval_exp(self, strategy, **kwargs):
        pass


@register_plugin("incremental-head", summary="AV-CIL's growing classifier (fresh rows for arriving classes, logits of seen classes only) for any strategy on the av-cil network")
def _incremental_head(ctx) -> IncrementalHeadPlugin:
    return IncrementalHeadPlugin()


# ---------------------------------------------------------------------------
# the released code's model selection: the epoch with the best validation accuracy
# ---------------------------------------------------------------------------
class BestValidEpochPlugin(SupervisedPlugin):
    """Keep, at every experience, the epoch with the best validation accuracy (the released
    AV-CIL code's ``step_{k}_best_model``): after each training epoch the model's top-1
    accuracy on the validation samples of every class seen so far (the benchmark's ``valid``
    stream, experiences ``0..k``) is measured, and the weights of the best epoch (strictly
    better than the earlier ones, as the code) are restored when the experience ends.

    The benchmark must have a ``valid`` stream (the avcil-* benchmarks' official ``val``
    split; ``validation_size`` of the world benchmarks). Plugins that read the model at the
    end of an experience (AV-CIL's old model) call :meth:`restore` first.
    Config: ``plugins: [best-valid-epoch]`` (every strategy of the run; ``studies.<s>.plugins``
    for one study).

    :param valid_stream: the benchmark's ``valid`` stream (experience ``k`` holds the
        validation samples of the classes of training experience ``k``).
    :param eval_batch_size: validation minibatch size.
    """

    def __init__(self, valid_stream, eval_batch_size: int = 256):
        super().__init__()
        if valid_stream is None:
            raise ValueError(
                "best-valid-epoch: the benchmark has no 'valid' stream; give it a validation split "
                "(the world benchmarks' validation_size, the avcil-* benchmarks' validation: true) "
                "or drop the plugin."
            )
        self.valid_stream = valid_stream
        self.eval_batch_size = int(eval_batch_size)
        self.best_acc: float = 0.0
        self.best_state: Optional[Dict[str, Tensor]] = None
        self.history: List[float] = []
        self._valid: List[Any] = []

    def before_training_exp(self, strategy, **kwargs):
        k = int(strategy.experience.current_experience)
        self._valid = [self.valid_stream[i].dataset for i in range(min(k + 1, len(self.valid_stream)))]
        self.best_acc, self.best_state, self.history = 0.0, None, []

    @torch.no_grad()
    def accuracy(self, strategy) -> float:
        """Top-1 accuracy of ``strategy.model`` on the validation samples of the seen classes."""
        model = strategy.model
        was_training = model.training
        model.eval()
        correct = total = 0
        try:
            for data in self._valid:
                loader = torch.utils.data.DataLoader(data, batch_size=self.eval_batch_size, shuffle=False,
                                                     collate_fn=resolve_collate(data, strategy))
                for batch in loader:
                    x, y = to_device(batch[0], strategy.device), batch[1].to(strategy.device)
                    correct += int((model(x).argmax(1) == y).sum())
                    total += int(y.shape[0])
        finally:
            model.train(was_training)
        return correct / max(1, total)

    def after_training_epoch(self, strategy, **kwargs):
        acc = self.accuracy(strategy)
        self.history.append(acc)
        if self.best_state is None or acc > self.best_acc:  # the first epoch is kept even at 0%
            self.best_acc = acc
            self.best_state = {k: v.detach().clone() for k, v in _unwrap(strategy.model).state_dict().items()}

    def restore(self, strategy) -> None:
        """Load the best epoch's weights (once per experience)."""
        if self.best_state is not None:
            _unwrap(strategy.model).load_state_dict(self.best_state)
            self.best_state = None

    def after_training_exp(self, strategy, **kwargs):
        self.restore(strategy)
        self._valid = []

    def state_dict(self) -> Dict[str, Any]:
        """What a checkpoint keeps (taken between experiences: the last one's validation curve)."""
        return {"history": list(self.history), "best_acc": float(self.best_acc)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.history, self.best_acc = list(state["history"]), float(state["best_acc"])


@register_plugin("best-valid-epoch", summary="keep each experience's epoch with the best accuracy on the valid stream (the released AV-CIL code's model selection)")
def _best_valid_epoch(ctx) -> BestValidEpochPlugin:
    scenario = getattr(ctx.bundle, "scenario", None)
    return BestValidEpochPlugin(getattr(scenario, "valid_stream", None))


# ---------------------------------------------------------------------------
# AV-CIL
# ---------------------------------------------------------------------------
def _avcil_model(model: nn.Module) -> nn.Module:
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    if not hasattr(model, "set_active_classes") or not hasattr(model, "attention"):
        raise TypeError(
            f"AV-CIL needs its audio-visual attention network (model.name 'av-cil', "
            f"avalanche_mm.models.fusion.AVCILNet), got {type(model).__name__}."
        )
    return model


class _AVCILCriterion(nn.Module):
    """The classification term of AV-CIL (reads the plugin's per-step state)."""

    def __init__(self, plugin: "AVCILPlugin"):
        super().__init__()
        self.plugin = plugin

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        p = self.plugin
        if not p.training:  # evaluation: plain CE over every output (the test stream has unseen classes)
            return F.cross_entropy(logits.float(), y.long())
        n = p.replay.n_current if p.replay.n_current is not None else logits.shape[0]
        if not p.old_tasks or p.ce == "joint" or n == logits.shape[0]:
            cols = torch.as_tensor(sorted(p.seen_classes), device=logits.device, dtype=torch.long)
            lookup = torch.full((logits.shape[1],), -1, dtype=torch.long, device=logits.device)
            lookup[cols] = torch.arange(len(cols), device=logits.device)
            return F.cross_entropy(logits[:, cols], lookup[y.long()])
        old = sorted(set().union(*map(set, p.old_tasks)))
        return split_cross_entropy(logits, y, n, p.current_classes, old)


class AVCILPlugin(SupervisedPlugin):
    """AV-CIL's distillation and contrastive terms, its exemplar memory and class bookkeeping.

    Use ``plugin.criterion()`` as the strategy's criterion (the split CE) and add
    ``plugin.replay`` to the plugins (the :class:`AVCIL` strategy does both).

    :param mem_size: exemplar memory (340 AVE, 500 Kinetics-Sounds, 1500 VGGSound100).
    :param mem_batch_size: exemplars per minibatch.
    :param storage_policy: the Avalanche storage policy (``class_balanced`` as the code).
    :param temperature: KD temperature T.
    :param lambda_i: weight of the instance contrastive term (0.5 AVE, 0.1 otherwise).
    :param lambda_c: weight of the class-aware contrastive term.
    :param tau_i: temperature of the instance contrastive term.
    :param tau_c: temperature of the class-aware contrastive term.
    :param lam: spatial vs temporal attention-distillation weight.
    :param ce: ``"split"`` (code) or ``"joint"``.
    :param class_contrastive_variant: ``"code"`` or ``"paper"``.
    :param contrastive_first_task: also use the contrastive terms on the first task
        (the code does not).
    :param kd_weight: weight of the per-task logit distillation (the code: 1, always on;
        0 ablates it).
    :param attention_weight: weight of the attention distillation (the code: 1 with its
        ``--attn_score_distil`` flag, which the released scripts set; 0 ablates it).
    """

    def __init__(
        self,
        *,
        mem_size: int = 340,
        mem_batch_size: int = 32,
        storage_policy: str = "class_balanced",
        temperature: float = 2.0,
        lambda_i: float = 0.5,
        lambda_c: float = 1.0,
        tau_i: float = 0.05,
        tau_c: float = 0.05,
        lam: float = 0.5,
        ce: str = "split",
        class_contrastive_variant: str = "code",
        contrastive_first_task: bool = False,
        kd_weight: float = 1.0,
        attention_weight: float = 1.0,
    ):
        super().__init__()
        for name, v in (("kd_weight", kd_weight), ("attention_weight", attention_weight), ("lambda_i", lambda_i), ("lambda_c", lambda_c)):
            if not v >= 0:
                raise ValueError(f"{name} must be >= 0, got {v!r}.")
        if ce not in ("split", "joint"):
            raise ValueError(f"ce must be 'split' or 'joint', got {ce!r}.")
        if class_contrastive_variant not in ("code", "paper"):
            raise ValueError(f"class_contrastive_variant must be 'code' or 'paper', got {class_contrastive_variant!r}.")
        for name, v in (("temperature", temperature), ("tau_i", tau_i), ("tau_c", tau_c)):
            if not v > 0:
                raise ValueError(f"{name} must be > 0, got {v!r}.")
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {lam!r}.")
        self.replay = ExemplarReplayPlugin(mem_size=mem_size, mem_batch_size=mem_batch_size, storage_policy=storage_policy)
        #: placed first in the strategy's plugins, so that an ``incremental-head`` plugin of the run does nothing
        self.head = _PassiveHead()
        self.temperature, self.lambda_i, self.lambda_c = float(temperature), float(lambda_i), float(lambda_c)
        self.tau_i, self.tau_c, self.lam = float(tau_i), float(tau_c), float(lam)
        self.ce, self.class_contrastive_variant = ce, class_contrastive_variant
        self.contrastive_first_task = bool(contrastive_first_task)
        self.kd_weight, self.attention_weight = float(kd_weight), float(attention_weight)
        self.old_tasks: List[List[int]] = []
        self.current_classes: List[int] = []
        self.seen_classes: List[int] = []
        self.old_model: Optional[nn.Module] = None
        self.training = False
        #: the terms of the last minibatch (floats), for logging and tests
        self.last_terms: Dict[str, float] = {}

    def criterion(self) -> nn.Module:
        """The classification loss to give the template."""
        return _AVCILCriterion(self)

    _STATE = ("old_tasks", "current_classes", "seen_classes", "old_model")

    def state_dict(self) -> Dict[str, Any]:
        """What a checkpoint keeps (the memory is the ``replay`` plugin's own state)."""
        if self.old_model is not None:
            self.old_model.clear_side_channel()
        return {k: getattr(self, k) for k in self._STATE}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for k in self._STATE:
            setattr(self, k, state[k])

    def before_training_exp(self, strategy, **kwargs):
        model = _avcil_model(strategy.model)
        self.current_classes = sorted(int(c) for c in strategy.experience.classes_in_this_experience)
        arriving = sorted(set(self.current_classes) - set(self.seen_classes))
        self.seen_classes = sorted(set(self.seen_classes) | set(self.current_classes))
        if self.old_tasks:  # the code appends freshly initialised rows for a step's new classes
            model.reset_classes(arriving)
        model.set_active_classes(self.seen_classes)

    def after_training_exp(self, strategy, **kwargs):
        for p in getattr(strategy, "plugins", ()):  # the kept epoch, not the last one, becomes the old model
            if isinstance(p, BestValidEpochPlugin):
                p.restore(strategy)
        self.old_tasks.append(list(self.current_classes))
        model = _avcil_model(strategy.model)
        model.clear_side_channel()  # non-leaf tensors of the last forward cannot be deep-copied
        self.old_model = copy.deepcopy(model).eval()
        for p in self.old_model.parameters():
            p.requires_grad_(False)

    def before_training_iteration(self, strategy, **kwargs):
        self.training = True

    def before_eval_iteration(self, strategy, **kwargs):
        self.training = False

    def before_eval_exp(self, strategy, **kwargs):
        if self.seen_classes:
            _avcil_model(strategy.model).set_active_classes(self.seen_classes)

    def before_backward(self, strategy, **kwargs):
        model = _avcil_model(strategy.model)
        self.last_terms = {}
        if not self.old_tasks:
            if self.contrastive_first_task:
                strategy.loss = strategy.loss + self._contrastive(model, strategy.mb_y)
            return
        n = self.replay.n_current if self.replay.n_current is not None else strategy.mb_y.shape[0]
        x = strategy.mb_x
        spatial, temporal = model.last_spatial_attention, model.last_temporal_attention
        audio, visual = model.last_audio_feature, model.last_visual_feature
        old = self.old_model
        old.set_active_classes(self.seen_classes)
        with torch.no_grad():
            old_logits = old(x)
            old_spatial, old_temporal = old.last_spatial_attention, old.last_temporal_attention
        kd = task_distillation(strategy.mb_output, old_logits, self.old_tasks, self.temperature)
        ad = attention_distillation(spatial[n:], old_spatial[n:], temporal[n:], old_temporal[n:], self.lam)
        self.last_terms.update(kd=float(kd.detach()), attention=float(ad.detach()))
        strategy.loss = strategy.loss + self.kd_weight * kd + self._contrastive(model, strategy.mb_y) + self.attention_weight * ad

    def _contrastive(self, model, y: Tensor) -> Tensor:
        a, v = model.last_audio_feature, model.last_visual_feature
        if _dist.is_distributed():
            # over the global batch, as one process computes it: this rank's audio rows against
            # every rank's visual rows (gathered with their gradient), labels gathered too
            v_all, own = _dist.gather_rows_with_grad(v, weight=float(a.shape[0]))
            y_all, _ = _dist.gather_rows(y)
            li = instance_contrastive(a, v_all, self.tau_i, positives=own)
            lc = class_contrastive(a, v_all, y, self.tau_c, self.class_contrastive_variant, y_visual=y_all)
        else:
            li = instance_contrastive(a, v, self.tau_i)
            lc = class_contrastive(a, v, y, self.tau_c, self.class_contrastive_variant)
        self.last_terms.update(instance=float(li.detach()), class_aware=float(lc.detach()))
        return self.lambda_i * li + self.lambda_c * lc


class AVCIL(FineTune):
    """AV-CIL: class-incremental audio-visual learning on pre-extracted features (module docstring).

    :param model: an :class:`~avalanche_mm.models.fusion.AVCILNet` (``model.name: av-cil``).
    :param optimizer: the optimizer (the paper: Adam, lr 1e-3, weight decay 1e-4).
    :param mem_size: exemplar memory (340 AVE, 500 Kinetics-Sounds, 1500 VGGSound100).
    :param mem_batch_size: exemplars per minibatch (None: half the training batch, 128 of 256 in the code).
    :param storage_policy: Avalanche storage policy of the memory.
    :param temperature: distillation temperature T.
    :param lambda_i: weight of the instance audio-visual contrastive term (0.5 AVE, 0.1 otherwise).
    :param lambda_c: weight of the class-aware audio-visual contrastive term.
    :param tau_i: temperature of the instance contrastive term.
    :param tau_c: temperature of the class-aware contrastive term.
    :param lam: spatial (lam) vs temporal (1 - lam) attention distillation.
    :param ce: ``"split"`` (current rows over new classes, exemplars over old; the code) or ``"joint"``.
    :param class_contrastive_variant: ``"code"`` (mean over the batch) or ``"paper"`` (mean over positives).
    :param contrastive_first_task: also use the contrastive terms on the first task (the code does not).
    :param kd_weight: weight of the per-task logit distillation (the code: 1; 0 ablates it).
    :param attention_weight: weight of the spatial/temporal attention distillation (the code: 1;
        0 ablates it, as the code without ``--attn_score_distil``).
    :param kwargs: :class:`~avalanche_mm.strategies.FineTune` arguments.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        mem_size: Annotated[int, Range(ge=1)] = 340,
        mem_batch_size: Optional[Annotated[int, Range(ge=1)]] = None,
        storage_policy: Literal["class_balanced", "experience_balanced", "reservoir"] = "class_balanced",
        temperature: Annotated[float, Range(gt=0.0)] = 2.0,
        lambda_i: Annotated[float, Range(ge=0.0)] = 0.5,
        lambda_c: Annotated[float, Range(ge=0.0)] = 1.0,
        tau_i: Annotated[float, Range(gt=0.0)] = 0.05,
        tau_c: Annotated[float, Range(gt=0.0)] = 0.05,
        lam: Annotated[float, Range(ge=0.0, le=1.0)] = 0.5,
        ce: Literal["split", "joint"] = "split",
        class_contrastive_variant: Literal["code", "paper"] = "code",
        contrastive_first_task: bool = False,
        kd_weight: Annotated[float, Range(ge=0.0)] = 1.0,
        attention_weight: Annotated[float, Range(ge=0.0)] = 1.0,
        plugins: Optional[List[SupervisedPlugin]] = None,
        **kwargs,
    ):
        _avcil_model(model)
        mb = int(kwargs.get("train_mb_size", 1)) * _dist.world_size()  # the global training batch
        self.avcil_plugin = AVCILPlugin(
            mem_size=mem_size, mem_batch_size=mem_batch_size or max(1, int(mb) // 2), storage_policy=storage_policy,
            temperature=temperature, lambda_i=lambda_i, lambda_c=lambda_c, tau_i=tau_i, tau_c=tau_c, lam=lam, ce=ce,
            class_contrastive_variant=class_contrastive_variant, contrastive_first_task=contrastive_first_task,
            kd_weight=kd_weight, attention_weight=attention_weight,
        )
        kwargs.pop("label_smoothing", None)
        super().__init__(
            model=model, optimizer=optimizer, criterion=self.avcil_plugin.criterion(),
            plugins=[self.avcil_plugin.head, self.avcil_plugin.replay, self.avcil_plugin] + list(plugins or []), **kwargs,
        )


# ---------------------------------------------------------------------------
# checks and registration
# ---------------------------------------------------------------------------
#: classes of the benchmarks whose bundles are not built by ``check`` (real data)
KNOWN_CLASS_COUNTS = {
    "avcil-ave": 28, "avcil-kinetics-sounds": 30, "avcil-vggsound100": 100,
    "seq-vggsound": 100, "dom-vggsound": 5, "gcil-vggsound": 100,
}


def benchmark_classes(ctx: CheckContext) -> Optional[int]:
    """The number of classes of ``ctx``'s benchmark, when known without reading data."""
    bundle = ctx.bundle
    if bundle is not None and getattr(bundle, "class_names", None):
        return len(bundle.class_names)
    return KNOWN_CLASS_COUNTS.get((ctx.benchmark or {}).get("name"))


def check_memory(ctx: CheckContext, params: dict, method: str, key: str = "mem_size") -> List[str]:
    """A memory below the number of classes leaves some class without an exemplar."""
    mem = params.get(key)
    n = benchmark_classes(ctx)
    if mem is not None and n is not None and mem < n:
        return [
            f"{ctx.key}.{key}: {method} got a memory of {mem} exemplars for {n} classes "
            f"(benchmark {(ctx.benchmark or {}).get('name')!r}); it needs at least one exemplar per seen "
            f"class: set {key} >= {n}"
        ]
    return []


def _check(ctx: CheckContext, params: dict) -> List[str]:
    out: List[str] = []
    model = ctx.model or {}
    mkey = ctx.model_key or "model"
    if model.get("name") != "av-cil":
        out.append(
            f"{mkey}.name: av-cil needs its audio-visual attention network, model.name 'av-cil'; got {model.get('name')!r}"
        )
    # the data (pre-extracted audio and visual features, or inputs: raw) is checked by the model
    # av-cil itself (models/fusion/avcil.py), so it is reported once
    out.extend(check_memory(ctx, params, "av-cil"))
    return out


@register_method(
    "av-cil",
    summary="AV-CIL: audio-guided attention, split CE + per-task KD + audio-visual contrastive + attention distillation on exemplars",
    params_from=AVCIL,
    model_kinds=("fusion",),
    family="replay",
    reference="Pian et al., ICCV 2023",
    check=_check,
    distributed=True,
)
def _build(ctx: BuildContext, params: dict):
    kw = ctx.common_kwargs(FineTune)  # the schedule arguments AVCIL forwards to FineTune
    kw.pop("criterion", None)
    return AVCIL(**kw, **params)


__all__ = [
    "AVCIL",
    "IncrementalHeadPlugin",
    "BestValidEpochPlugin",
    "AVCILPlugin",
    "ExemplarReplayPlugin",
    "make_storage_policy",
    "split_cross_entropy",
    "task_distillation",
    "instance_contrastive",
    "class_contrastive",
    "attention_distillation",
    "check_memory",
    "benchmark_classes",
]
