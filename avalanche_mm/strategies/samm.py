"""SAMM: replay with relational cross-modal alignment ("Beyond Unimodal Learning",
Sarfraz, Zonooz and Arani, CoLLAs 2024; NeurAI-Lab/MultiModal-CL, ``models/mmcl.py``).

The fusion network gives a fused output ``z`` and one output per modality ``z_m``
(the fused head decomposed, as :class:`~avalanche_mm.models.FusionModel`'s
``last_unimodal_logits``; the released ``AVClassifier`` does the same). On the
current minibatch, and separately on a minibatch of buffered samples:

``L = CE(z, y) + beta * sum_m [CE(z_m, y) + w_fa * mean_{n != m} RKD(z_m, sg(z_n))]``

with the relational alignment term of the released ``RKD`` (distance-wise
potential of relational knowledge distillation): rows L2-normalised,
``psi(Z)_ij = ||z_i - z_j|| / mean_{i != j} ||z_i - z_j||`` and
``RKD(S, T) = SmoothL1(psi(S), psi(T))``; ``sg`` stops the gradient, so each
modality is pulled towards the other's relational structure (the similarities
between samples), not towards its values. ``beta = reg_weight = 0.01``,
``w_fa = feature_alignment_weight = 25`` (the code's defaults). With two
modalities ``mean_{n != m}`` is the single other one, as in the code.

On the buffered rows SAMM adds a consistency term with *dynamic logit selection*:
the stored outputs ``(z_a, z_v, z)`` of each buffered sample; the one whose
modality the current model trusts most for that sample (the highest current
probability of the true label among audio, visual, fused) is the target:
``cons_weight * [MSE(z, t) + beta * sum_m MSE(z_m, t)]``.

Deviations from the released code: the buffer is an Avalanche storage policy
(``reservoir`` by default, the code's reservoir ``Buffer``) updated after each
experience, and a sample's outputs are stored when it enters the buffer (the
model at the end of that experience, eval mode) instead of at the training
step that inserted it. The temperature-calibrated "dynamic weighted ensemble"
inference mode of the code is not reproduced (the fused output is evaluated).

Under ``torchrun`` (docs/scaling.md) the buffer and the stored outputs are identical on
every rank, the buffered minibatch is the global count dealt round-robin
(:class:`~avalanche_mm.strategies.av_cil.ExemplarReplayPlugin`), and the relational term
is computed per shard (each rank's distance structure over its own rows, what
``DistributedDataParallel`` on the released code computes).

:class:`SAMMPlugin` holds the logic (its :attr:`SAMMPlugin.replay` is the
memory); :class:`SAMM` is fine-tuning with it.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Dict, List, Literal, Mapping, Optional

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from torch import Tensor, nn

from avalanche_mm import distributed as _dist
from avalanche_mm.data.batch import to_device
from avalanche_mm.registry import Range
from avalanche_mm.strategies.av_cil import ExemplarReplayPlugin, check_memory
from avalanche_mm.strategies.finetune import FineTune
from avalanche_mm.strategies.ogm_ge import check_per_modality_outputs
from avalanche_mm.strategies.registry import BuildContext, CheckContext, register_method


def distance_potential(x: Tensor) -> Tensor:
    """RKD's distance-wise potential: pairwise distances divided by their mean over ``i != j``."""
    sq = x.pow(2).sum(-1)
    d = torch.sqrt(torch.clamp(sq[:, None] + sq[None, :] - 2 * x @ x.t(), min=1e-12))
    mu = d.sum() / (d > 0).sum().clamp(min=1)
    return d / (mu + 1e-8)


def relational_alignment(source: Tensor, target: Tensor) -> Tensor:
    """``SmoothL1(psi(norm(source)), psi(norm(target)))`` (the released ``RKD.eval_loss``, distance term).

    :param source: ``[B, ...]`` outputs of one modality (gets the gradient).
    :param target: ``[B, ...]`` outputs of the other (detach it to stop its gradient).
    """
    s = F.normalize(source.reshape(source.shape[0], -1), dim=1)
    t = F.normalize(target.reshape(target.shape[0], -1), dim=1)
    return F.smooth_l1_loss(distance_potential(s), distance_potential(t))


def _unimodal(model: nn.Module) -> Dict[str, Tensor]:
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    uni = getattr(model, "last_unimodal_logits", None)
    if not isinstance(uni, dict) or len(uni) < 2:
        raise ValueError(
            f"SAMM needs per-modality outputs: `model.last_unimodal_logits` (modality -> [B, C]) for at least "
            f"two modalities, set on every forward; {type(model).__name__} gives {type(uni).__name__}. Use a "
            "fusion model from avalanche_mm.models (FusionModel)."
        )
    return uni


def _key(sample) -> str:
    h = hashlib.sha1()
    x, y = sample[0], sample[1]
    for m in sorted(x):
        v = x[m]
        if isinstance(v, Tensor):
            h.update(m.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    h.update(str(int(y)).encode())
    return h.hexdigest()


class _SAMMCriterion(nn.Module):
    def __init__(self, plugin: "SAMMPlugin"):
        super().__init__()
        self.plugin = plugin

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        n = self.plugin.replay.n_current
        if not self.plugin.training or n is None or n >= logits.shape[0]:
            return F.cross_entropy(logits, y)
        # the code: CE(current) + CE(buffer), two means
        return F.cross_entropy(logits[:n], y[:n]) + F.cross_entropy(logits[n:], y[n:])


class SAMMPlugin(SupervisedPlugin):
    """SAMM's unimodal, relational-alignment and consistency terms (module docstring).

    Give ``plugin.criterion()`` to the template and add ``plugin.replay`` before the plugin.

    :param mem_size: buffer size.
    :param mem_batch_size: buffered samples per minibatch.
    :param storage_policy: Avalanche storage policy (``reservoir`` as the code).
    :param reg_weight: ``beta``, weight of the unimodal terms.
    :param alignment_weight: ``w_fa``, weight of the relational alignment inside them.
    :param cons_weight: weight of the consistency term on buffered samples (0: off).
    """

    def __init__(
        self,
        *,
        mem_size: int = 500,
        mem_batch_size: int = 32,
        storage_policy: str = "reservoir",
        reg_weight: float = 0.01,
        alignment_weight: float = 25.0,
        cons_weight: float = 1.0,
    ):
        super().__init__()
        for name, v in (("reg_weight", reg_weight), ("alignment_weight", alignment_weight), ("cons_weight", cons_weight)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"SAMM {name} must be a number >= 0, got {v!r}.")
        self.replay = ExemplarReplayPlugin(mem_size=mem_size, mem_batch_size=mem_batch_size, storage_policy=storage_policy)
        self.reg_weight, self.alignment_weight, self.cons_weight = float(reg_weight), float(alignment_weight), float(cons_weight)
        #: sample key -> {"fused": z, m: z_m} stored when the sample entered the buffer
        self.stored: Dict[str, Dict[str, Tensor]] = {}
        self.training = False
        self.last_terms: Dict[str, float] = {}

    def criterion(self) -> nn.Module:
        """The fused classification loss to give the template."""
        return _SAMMCriterion(self)

    _STATE = ("stored",)

    def state_dict(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in self._STATE}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for k in self._STATE:
            setattr(self, k, state[k])

    def before_training_iteration(self, strategy, **kwargs):
        self.training = True

    def before_eval_iteration(self, strategy, **kwargs):
        self.training = False

    # ------------------------------------------------------------------
    def unimodal_terms(self, uni: Mapping[str, Tensor], y: Tensor) -> Tensor:
        """``sum_m [CE(z_m, y) + w_fa * mean_{n != m} RKD(z_m, sg(z_n))]`` on some rows."""
        mods = sorted(uni)
        total = y.new_zeros((), dtype=torch.float32)
        align = 0.0
        for m in mods:
            ra = sum(relational_alignment(uni[m], uni[o].detach()) for o in mods if o != m) / (len(mods) - 1)
            total = total + F.cross_entropy(uni[m], y) + self.alignment_weight * ra
            align += float(ra.detach())
        self.last_terms["alignment"] = self.last_terms.get("alignment", 0.0) + align
        return total

    def consistency(self, fused: Tensor, uni: Mapping[str, Tensor], y: Tensor, targets: Dict[str, Tensor]) -> Tensor:
        """Dynamic logit selection + MSE (buffered rows). ``targets``: source -> stored ``[N, C]``."""
        sources = sorted(uni) + ["fused"]
        current = {**uni, "fused": fused}
        with torch.no_grad():
            probs = torch.stack([F.softmax(current[s], 1).gather(1, y.view(-1, 1)).squeeze(1) for s in sources])
            pick = probs.argmax(0)  # [N]
            stored = torch.stack([targets[s] for s in sources], 1)  # [N, S, C]
            target = stored[torch.arange(stored.shape[0], device=stored.device), pick]
        loss = F.mse_loss(fused, target) + self.reg_weight * sum(F.mse_loss(uni[m], target) for m in sorted(uni))
        return loss

    def before_backward(self, strategy, **kwargs):
        self.last_terms = {}
        uni = _unimodal(strategy.model)
        y = strategy.mb_y
        n = self.replay.n_current if self.replay.n_current is not None else y.shape[0]
        extra = self.unimodal_terms({m: z[:n] for m, z in uni.items()}, y[:n])
        if n < y.shape[0]:
            extra = extra + self.unimodal_terms({m: z[n:] for m, z in uni.items()}, y[n:])
            if self.cons_weight > 0:
                targets = self._stored_targets(strategy, uni)
                if targets is not None:
                    cons = self.consistency(strategy.mb_output[n:], {m: z[n:] for m, z in uni.items()}, y[n:], targets)
                    self.last_terms["consistency"] = float(cons.detach())
                    extra = extra + self.cons_weight * cons
        strategy.loss = strategy.loss + self.reg_weight * extra

    def _stored_targets(self, strategy, uni) -> Optional[Dict[str, Tensor]]:
        idx = self.replay.replay_index
        if idx is None:
            return None
        all_keys = self.replay_keys
        keys = [all_keys[int(i)] for i in idx]
        if any(k not in self.stored for k in keys):
            return None
        dev = strategy.mb_output.device
        return {s: torch.stack([self.stored[k][s] for k in keys]).to(dev) for s in sorted(uni) + ["fused"]}

    @property
    def replay_keys(self) -> List[str]:
        """The key of every buffered sample (cached per buffer content)."""
        samples = self.replay.samples
        if getattr(self, "_keys_of", None) is not samples:
            self._keys, self._keys_of = [_key(x) for x in samples], samples
        return self._keys

    def after_training_exp(self, strategy, **kwargs):
        """Store the outputs of the samples that just entered the buffer (runs after the replay plugin)."""
        samples = self.replay.samples
        keys = self.replay_keys
        new = [i for i, k in enumerate(keys) if k not in self.stored]
        model = strategy.model
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for start in range(0, len(new), 256):
                rows = [samples[i] for i in new[start : start + 256]]
                batch = to_device(list(self.replay.collate(rows)), strategy.device)
                fused = model(batch[0])
                uni = _unimodal(model)
                for j, i in enumerate(new[start : start + 256]):
                    entry = {m: z[j].detach().cpu() for m, z in uni.items()}
                    entry["fused"] = fused[j].detach().cpu()
                    self.stored[keys[i]] = entry
        model.train(was_training)
        keep = set(keys)
        self.stored = {k: v for k, v in self.stored.items() if k in keep}


class SAMM(FineTune):
    """Replay with relational cross-modal alignment and dynamic-logit consistency (module docstring).

    :param model: a fusion model with per-modality outputs (:class:`~avalanche_mm.models.FusionModel`).
    :param optimizer: the optimizer.
    :param mem_size: buffer size (500, 1000 or 2000 in the paper).
    :param mem_batch_size: buffered samples per minibatch (None: the training batch size, as mammoth's minibatch_size).
    :param storage_policy: Avalanche storage policy of the buffer (``reservoir`` as the code).
    :param reg_weight: weight of the unimodal terms (beta).
    :param alignment_weight: weight of the relational alignment inside them.
    :param cons_weight: weight of the consistency term on buffered samples.
    :param kwargs: :class:`~avalanche_mm.strategies.FineTune` arguments.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        mem_size: Annotated[int, Range(ge=1)] = 500,
        mem_batch_size: Optional[Annotated[int, Range(ge=1)]] = None,
        storage_policy: Literal["reservoir", "class_balanced", "experience_balanced"] = "reservoir",
        reg_weight: Annotated[float, Range(ge=0.0)] = 0.01,
        alignment_weight: Annotated[float, Range(ge=0.0)] = 25.0,
        cons_weight: Annotated[float, Range(ge=0.0)] = 1.0,
        plugins: Optional[List[SupervisedPlugin]] = None,
        **kwargs,
    ):
        self.samm_plugin = SAMMPlugin(
            mem_size=mem_size, mem_batch_size=mem_batch_size or int(kwargs.get("train_mb_size", 32)) * _dist.world_size(),
            storage_policy=storage_policy, reg_weight=reg_weight, alignment_weight=alignment_weight, cons_weight=cons_weight,
        )
        kwargs.pop("label_smoothing", None)
        super().__init__(
            model=model, optimizer=optimizer, criterion=self.samm_plugin.criterion(),
            plugins=[self.samm_plugin.replay, self.samm_plugin] + list(plugins or []), **kwargs,
        )


def _check(ctx: CheckContext, params: dict) -> List[str]:
    return check_per_modality_outputs(ctx, "samm") + check_memory(ctx, params, "samm")


@register_method(
    "samm",
    summary="SAMM: replay + relational cross-modal alignment (RKD distances) + dynamic-logit consistency",
    params_from=SAMM,
    model_kinds=("fusion",),
    family="replay",
    reference="Sarfraz et al., CoLLAs 2024",
    check=_check,
    distributed=True,
)
def _build(ctx: BuildContext, params: dict):
    kw = ctx.common_kwargs(FineTune)
    kw.pop("criterion", None)
    return SAMM(**kw, **params)


__all__ = ["SAMM", "SAMMPlugin", "relational_alignment", "distance_potential"]
