"""OGM-GE: on-the-fly gradient modulation with generalisation enhancement (Peng et al., CVPR 2022).

Modality imbalance: in a jointly trained fusion network the dominant modality
(the one that already predicts the label well) takes most of the gradient and
the weak one stays under-trained. OGM-GE slows the dominant modality's encoder:

- per-modality score on the minibatch, from the fusion model's per-modality
  outputs (``model.last_unimodal_logits``, the fused head decomposed as
  ``W_m h_m + b / M``): ``s_m = sum_b softmax(z_m[b])[y_b]``;
- discrepancy ratio ``rho_m = s_m / mean_{j != m} s_j`` (for two modalities
  exactly the released ``ratio_v = score_v / score_a`` and ``ratio_a = 1 / ratio_v``);
- coefficient ``k_m = 1 - tanh(alpha * rho_m)`` if ``rho_m > 1`` else 1
  (``formula="code"``: the released ``main.py`` and Eq. 10 of the paper), or
  ``k_m = 1 - tanh(alpha * (rho_m - 1))`` (``formula="shifted"``: continuous at
  ``rho = 1``, the form of :func:`avalanche_mm.metrics.functional.ogm_ge_coefficients`);
- after ``loss.backward()`` the gradient of every weight of modality ``m``'s
  encoder becomes ``k_m * g + N(0, std(g) + 1e-8)`` (OGM-GE; ``noise=False`` is
  plain OGM). The noise's standard deviation is that of the *unscaled*
  gradient tensor, drawn for every modality's encoder (dominant or not) while
  the modulation is on, as the released code does.

What the released code fixes and we generalise:

- *Which parameters*: the code modulates the 4-D (conv kernel) gradients of its
  two ResNet-18 encoders, whose only multi-dimensional parameters are conv
  kernels. ``scope="weights"`` (default) takes every parameter with ``dim >= 2``
  of the modality's encoder, which is the same set for those encoders and the
  natural one for MLP/1-D-conv/GRU encoders; ``scope="all"`` adds biases and
  norm parameters. The fusion layer and the head are never modulated.
- *More than two modalities*: the code is written for audio + visual. Here each
  modality is compared with the mean score of the others; every modality whose
  score is above that mean (``rho_m > 1``) is slowed in proportion. With two
  modalities this is the released rule (at an exact tie ``rho = 1`` the code
  slows audio, we slow neither).
- *When*: the code modulates during epochs ``modulation_starts..modulation_ends``
  (0..50 of 100, inclusive); here ``start_epoch``/``end_epoch`` count epochs
  within each experience.

Under ``torchrun`` (several processes; docs/scaling.md): ``DistributedDataParallel`` on
the released code would modulate the already averaged gradient with each rank's own
coefficients (from its shard's scores) and its own noise, and the replicas would drift
apart. Here the step is the 1-process step on the global batch: the per-modality score
sums are all-reduced before the ratios (every rank gets the global batch's
coefficients), the plugin averages the gradients before modulating them, and the noise
comes from a generator seeded from the run's seed, the experience and the step -
identical on every rank and for any number of processes (a 1-process ``torchrun`` run
draws the same noise; a plain run keeps the global generator).

Logged per modality per iteration (through the strategy's evaluator, hence
``metrics.jsonl``): ``OGMGE_Coeff_<m>_MB/train_phase/train_stream/TaskNNN``;
the history is also kept in :attr:`OGMGEPlugin.history`.

:class:`OGMGEPlugin` works with any strategy (fine-tuning, ER, LwF, ...) and any
model exposing per-modality logits and per-modality encoders
(:class:`~avalanche_mm.models.FusionModel`, or give ``encoders``);
:class:`OGMGE` is continual fine-tuning with the plugin.
"""

from __future__ import annotations

import math
from typing import Annotated, Dict, List, Literal, Mapping, Optional, Sequence, Tuple

import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metric_results import MetricValue
from torch import Tensor, nn

from avalanche_mm import distributed as _dist
from avalanche_mm.registry import Range
from avalanche_mm.strategies.finetune import FineTune
from avalanche_mm.strategies.registry import BuildContext, CheckContext, register_method


def _unwrap(model: nn.Module) -> nn.Module:
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def ogm_scores(unimodal_logits: Mapping[str, Tensor], targets: Tensor) -> Dict[str, float]:
    """``s_m = sum_b softmax(z_m[b])[y_b]`` for every modality (no gradient).

    :param unimodal_logits: modality -> ``[B, C]`` logits of that modality alone.
    :param targets: ``[B]`` integer targets.
    """
    y = targets.reshape(-1).long()
    out = {}
    for m, z in unimodal_logits.items():
        if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[0] != y.shape[0]:
            got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"OGM-GE: logits of modality {m!r} must be [B, C] with B={y.shape[0]}, got {got}.")
        p = torch.softmax(z.detach().float(), dim=-1)
        out[m] = float(p.gather(1, y.to(z.device).view(-1, 1)).sum())
    return out


def global_scores(scores: Mapping[str, float]) -> Dict[str, float]:
    """The per-modality scores of the global batch under ``torchrun``: each rank's sums
    ``s_m`` all-reduced (one collective), so every rank derives the same ratios and
    coefficients, those of a 1-process run on the whole batch. Unchanged otherwise.

    :param scores: modality -> this rank's score sum (:func:`ogm_scores`).
    """
    if not _dist.is_distributed():
        return dict(scores)
    mods = sorted(scores)
    total = _dist.all_reduce_sum(torch.tensor([float(scores[m]) for m in mods], dtype=torch.float64))
    return {m: float(v) for m, v in zip(mods, total.tolist())}


def ogm_ratios(scores: Mapping[str, float]) -> Dict[str, float]:
    """``rho_m = s_m / mean_{j != m} s_j`` (two modalities: ``s_a / s_b`` and its inverse).

    :param scores: modality -> score.
    """
    if len(scores) < 2:
        raise ValueError(f"OGM-GE compares modalities: need at least 2, got {list(scores)}.")
    out = {}
    for m, s in scores.items():
        others = [float(v) for k, v in scores.items() if k != m]
        denom = sum(others) / len(others)
        out[m] = float(s) / denom if denom > 0 else math.inf
    return out


def ogm_coefficients(ratios: Mapping[str, float], *, alpha: float, formula: str = "code") -> Dict[str, float]:
    """The modulation coefficient of each modality.

    ``formula="code"``: ``k = 1 - tanh(alpha * rho)`` when ``rho > 1`` (released code, paper Eq. 10);
    ``formula="shifted"``: ``k = 1 - tanh(alpha * (rho - 1))`` when ``rho > 1``; else ``k = 1``.

    :param ratios: modality -> discrepancy ratio.
    :param alpha: modulation strength (> 0).
    :param formula: ``"code"`` or ``"shifted"``.
    """
    if formula not in ("code", "shifted"):
        raise ValueError(f"formula must be 'code' or 'shifted', got {formula!r}.")
    shift = 0.0 if formula == "code" else 1.0
    return {m: (1.0 - math.tanh(alpha * (r - shift))) if r > 1 else 1.0 for m, r in ratios.items()}


def modality_parameters(
    model: nn.Module,
    *,
    encoders: Optional[Mapping[str, str]] = None,
    scope: str = "weights",
) -> Dict[str, List[Tuple[str, nn.Parameter]]]:
    """The parameters OGM-GE modulates, by modality.

    :param model: the fusion model.
    :param encoders: modality -> parameter-name prefix of its encoder (default:
        ``encoders.<m>.``, the layout of :class:`~avalanche_mm.models.FusionModel`).
    :param scope: ``"weights"`` (parameters with ``dim >= 2``) or ``"all"``.
    """
    if scope not in ("weights", "all"):
        raise ValueError(f"scope must be 'weights' or 'all', got {scope!r}.")
    model = _unwrap(model)
    if encoders is None:
        mods = getattr(model, "encoders", None)
        if not isinstance(mods, nn.ModuleDict) or len(mods) < 2:
            raise ValueError(
                f"OGM-GE needs the per-modality encoders of the model: {type(model).__name__} has no "
                "`encoders` ModuleDict with at least two modalities; give encoders={modality: "
                "'parameter.name.prefix.'}."
            )
        encoders = {m: f"encoders.{m}." for m in mods}
    out: Dict[str, List[Tuple[str, nn.Parameter]]] = {m: [] for m in encoders}
    for name, p in model.named_parameters():
        if not p.requires_grad or (scope == "weights" and p.dim() < 2):
            continue
        for m, prefix in encoders.items():
            if name.startswith(prefix):
                out[m].append((name, p))
    empty = [m for m, ps in out.items() if not ps]
    if empty:
        raise ValueError(
            f"OGM-GE: no trainable {'weight ' if scope == 'weights' else ''}parameters under the encoder "
            f"prefixes of modalities {empty} ({ {m: encoders[m] for m in empty} })."
        )
    return out


class OGMGEPlugin(SupervisedPlugin):
    """On-the-fly gradient modulation with generalisation enhancement (see module docstring).

    :param alpha: modulation strength ``alpha`` (> 0).
    :param noise: add the Gaussian generalisation-enhancement noise (OGM-GE); False: OGM.
    :param formula: ``"code"`` (``1 - tanh(alpha * rho)``, released code) or
        ``"shifted"`` (``1 - tanh(alpha * (rho - 1))``).
    :param scope: ``"weights"`` (encoder parameters with ``dim >= 2``) or ``"all"``.
    :param start_epoch: first epoch (within each experience) with modulation.
    :param end_epoch: last epoch with modulation (inclusive; None: every epoch).
    :param encoders: modality -> parameter-name prefix of its encoder (default ``encoders.<m>.``).
    :param attribute: model attribute with the per-modality logits.
    :param log_every: publish the coefficients every N iterations (0: never).
    """

    def __init__(
        self,
        *,
        alpha: float = 0.1,
        noise: bool = True,
        formula: str = "code",
        scope: str = "weights",
        start_epoch: int = 0,
        end_epoch: Optional[int] = None,
        encoders: Optional[Mapping[str, str]] = None,
        attribute: str = "last_unimodal_logits",
        log_every: int = 1,
    ):
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise ValueError(f"OGM-GE alpha must be a number > 0, got {alpha!r}.")
        if formula not in ("code", "shifted"):
            raise ValueError(f"OGM-GE formula must be 'code' or 'shifted', got {formula!r}.")
        if scope not in ("weights", "all"):
            raise ValueError(f"OGM-GE scope must be 'weights' or 'all', got {scope!r}.")
        if start_epoch < 0 or (end_epoch is not None and end_epoch < start_epoch):
            raise ValueError(f"OGM-GE: need 0 <= start_epoch <= end_epoch, got {start_epoch}, {end_epoch}.")
        self.alpha, self.noise, self.formula, self.scope = float(alpha), bool(noise), formula, scope
        self.start_epoch, self.end_epoch = int(start_epoch), end_epoch
        self.encoders = dict(encoders) if encoders is not None else None
        self.attribute = attribute
        self.log_every = int(log_every)
        self.last_coefficients: Dict[str, float] = {}
        self.last_ratios: Dict[str, float] = {}
        #: (training iteration, {modality: coefficient}) of every modulated step
        self.history: List[Tuple[int, Dict[str, float]]] = []

    # ------------------------------------------------------------------
    def _unimodal_logits(self, strategy) -> Dict[str, Tensor]:
        model = _unwrap(strategy.model)
        logits = getattr(model, self.attribute, None)
        if not isinstance(logits, dict) or len(logits) < 2:
            raise ValueError(
                f"OGM-GE needs per-modality logits: the model must set `model.{self.attribute}` "
                f"(modality -> [B, C]) on every forward for at least two modalities; "
                f"{type(model).__name__} gives {type(logits).__name__}. Use a fusion model from "
                "avalanche_mm.models (FusionModel) or set the attribute in your forward."
            )
        return logits

    def _active(self, strategy) -> bool:
        epoch = int(strategy.clock.train_exp_epochs)
        return epoch >= self.start_epoch and (self.end_epoch is None or epoch <= self.end_epoch)

    def coefficients(self, strategy) -> Dict[str, float]:
        """The coefficients of the current minibatch (also sets ``last_ratios``).

        Under ``torchrun`` the scores are sums over the *global* batch (each rank's
        per-modality sums all-reduced), so every rank computes the coefficients a
        1-process run computes on the whole batch.
        """
        logits = self._unimodal_logits(strategy)
        y = strategy.mb_y
        # AV-CIL-style replay strategies append exemplars: score every row, as the code scores its batch
        self.last_ratios = ogm_ratios(global_scores(ogm_scores(logits, y)))
        return ogm_coefficients(self.last_ratios, alpha=self.alpha, formula=self.formula)

    @torch.no_grad()
    def modulate(self, params: Mapping[str, Sequence[Tuple[str, nn.Parameter]]], coeffs: Mapping[str, float],
                 generator: Optional[torch.Generator] = None) -> None:
        """``g <- k_m g (+ N(0, std(g) + 1e-8))`` for every parameter of every modality.

        :param generator: the generator of the noise (default: the global one).
        """
        for m, plist in params.items():
            k = float(coeffs.get(m, 1.0))
            for _, p in plist:
                g = p.grad
                if g is None:
                    continue
                if self.noise:
                    std = float(g.float().std()) if g.numel() > 1 else 0.0
                    noise = torch.empty_like(g).normal_(0.0, std + 1e-8, generator=generator)
                    p.grad = g * k + noise
                elif k != 1.0:
                    g.mul_(k)

    def before_training_exp(self, strategy, **kwargs):
        # the noise's seed under torchrun: the same on every rank and for any number of processes
        self._noise_seed = _dist.shared_seed("ogm-ge", int(strategy.experience.current_experience)) \
            if _dist.in_process_group() else None

    def _noise_generator(self, strategy, device) -> Optional[torch.Generator]:
        seed = getattr(self, "_noise_seed", None)
        if seed is None:
            return None
        gen = torch.Generator(device=device)
        gen.manual_seed((seed * 1_000_003 + int(strategy.clock.train_exp_iterations)) & 0x7FFFFFFFFFFF)
        return gen

    def after_backward(self, strategy, **kwargs):
        if not self._active(strategy):
            return
        if _dist.is_distributed():
            # modulate the gradient of the global batch (what the code does on one device): average
            # now (the template's average before the step then leaves the identical gradients as they are)
            _dist.average_gradients([p for g in strategy.optimizer.param_groups for p in g["params"]],
                                    weight=float(strategy.mb_batch_size))
        coeffs = self.coefficients(strategy)
        params = modality_parameters(strategy.model, encoders=self.encoders, scope=self.scope)
        missing = sorted(set(params) - set(coeffs))
        if missing:
            raise ValueError(
                f"OGM-GE: the model's per-modality logits cover {sorted(coeffs)} but its encoders are "
                f"{sorted(params)}; every modulated encoder needs per-modality logits."
            )
        device = next(p for plist in params.values() for _, p in plist).device
        self.modulate(params, coeffs, generator=self._noise_generator(strategy, device) if self.noise else None)
        self.last_coefficients = dict(coeffs)
        it = int(strategy.clock.train_iterations)
        self.history.append((it, dict(coeffs)))
        self._publish(strategy, coeffs, it)

    def _publish(self, strategy, coeffs: Mapping[str, float], it: int) -> None:
        evaluator = getattr(strategy, "evaluator", None)
        if self.log_every <= 0 or evaluator is None or it % self.log_every:
            return
        try:
            task = int(strategy.mb_task_id.reshape(-1)[0])
        except (AttributeError, IndexError, TypeError, ValueError):
            task = 0
        for m in sorted(coeffs):
            name = f"OGMGE_Coeff_{m}_MB/train_phase/train_stream/Task{task:03d}"
            evaluator.publish_metric_value(MetricValue(self, name, float(coeffs[m]), it))


class OGMGE(FineTune):
    """Continual fine-tuning of a fusion model with OGM-GE gradient modulation.

    :param model: a fusion model with per-modality logits and encoders
        (:class:`~avalanche_mm.models.FusionModel`).
    :param optimizer: the optimizer.
    :param alpha: modulation strength ``alpha`` (> 0).
    :param noise: add the generalisation-enhancement noise (OGM-GE); False: OGM.
    :param formula: ``"code"`` (``k = 1 - tanh(alpha * rho)``, the released code and
        the paper) or ``"shifted"`` (``k = 1 - tanh(alpha * (rho - 1))``).
    :param scope: ``"weights"`` (encoder parameters with ``dim >= 2``) or ``"all"``.
    :param start_epoch: first epoch (within each experience) with modulation.
    :param end_epoch: last epoch with modulation (inclusive; None: all).
    :param mem_size: None: plain fine-tuning + OGM-GE; an int: experience replay with this
        memory (Avalanche ``ReplayPlugin``, as the ``er`` method) + OGM-GE, the plugin on
        another strategy.
    :param storage_policy: the replay memory's Avalanche storage policy (with ``mem_size``).
    :param kwargs: :class:`~avalanche_mm.strategies.FineTune` arguments.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        alpha: Annotated[float, Range(gt=0.0)] = 0.1,
        noise: bool = True,
        formula: Literal["code", "shifted"] = "code",
        scope: Literal["weights", "all"] = "weights",
        start_epoch: Annotated[int, Range(ge=0)] = 0,
        end_epoch: Optional[Annotated[int, Range(ge=0)]] = None,
        mem_size: Optional[Annotated[int, Range(ge=1)]] = None,
        storage_policy: Literal["class_balanced", "experience_balanced", "reservoir"] = "class_balanced",
        plugins: Optional[List[SupervisedPlugin]] = None,
        **kwargs,
    ):
        self.ogm_plugin = OGMGEPlugin(
            alpha=alpha, noise=noise, formula=formula, scope=scope, start_epoch=start_epoch, end_epoch=end_epoch
        )
        extra: List[SupervisedPlugin] = []
        self.replay_plugin = None
        if mem_size is not None:
            from avalanche_mm.strategies.er import make_storage_policy
            from avalanche_mm.strategies.plugins import ReplayPlugin

            bs = int(kwargs.get("train_mb_size", 32))
            self.replay_plugin = ReplayPlugin(
                mem_size=mem_size, batch_size=bs, batch_size_mem=bs, storage_policy=make_storage_policy(storage_policy, mem_size)
            )
            extra.append(self.replay_plugin)
        super().__init__(model=model, optimizer=optimizer, plugins=extra + list(plugins or []) + [self.ogm_plugin], **kwargs)


# ---------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------
def check_per_modality_outputs(ctx: CheckContext, method: str) -> List[str]:
    """Problems with using a per-modality method on ``ctx``'s model (shared by OGM-GE, SAMM)."""
    name = (ctx.model or {}).get("name")
    key = ctx.model_key or "model"
    if ctx.kind != "fusion":
        return [f"{key}.kind: {method} needs a fusion model with per-modality outputs, got kind {ctx.kind!r}"]
    if name not in ("fusion", "av-cil"):
        return [
            f"{key}.name: {method} needs per-modality outputs (model.last_unimodal_logits) and per-modality "
            f"encoders; model {name!r} has none. Use model.name 'fusion' (FusionModel) or 'av-cil'"
        ]
    bundle = ctx.bundle
    mods = list(getattr(bundle, "modalities", ()) or ()) if bundle is not None else None
    if mods is not None and len(mods) < 2:
        return [
            f"{ctx.key}.method: {method} compares modalities but benchmark "
            f"{getattr(bundle, 'name', '?')!r} has only {mods}; it needs at least two"
        ]
    return []


def _check(ctx: CheckContext, params: dict) -> List[str]:
    from avalanche_mm.strategies.av_cil import check_memory

    return check_per_modality_outputs(ctx, "ogm-ge") + check_memory(ctx, params, "ogm-ge")


@register_method(
    "ogm-ge",
    summary="OGM-GE: slow the dominant modality's encoder gradients (k = 1 - tanh(alpha rho)) + Gaussian noise",
    params_from=OGMGE,
    model_kinds=("fusion",),
    family="regularization",
    reference="Peng et al., CVPR 2022",
    check=_check,
    distributed=True,
)
def _build(ctx: BuildContext, params: dict):
    return OGMGE(**ctx.common_kwargs(FineTune), **params)  # FineTune's schedule arguments


__all__ = [
    "OGMGEPlugin",
    "OGMGE",
    "ogm_scores",
    "global_scores",
    "ogm_ratios",
    "ogm_coefficients",
    "modality_parameters",
    "check_per_modality_outputs",
]
