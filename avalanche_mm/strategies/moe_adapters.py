"""MoE-Adapters4CL (Yu et al., "Boosting Continual Learning of Vision-Language Models
via Mixture-of-Experts Adapters", CVPR 2024), with its DDAS selector.

The CLIP backbone stays frozen. In every transformer block of both towers a
mixture of bottleneck experts sits beside the MLP::

    x <- x + MLP(LN x) + sum_i g_i(x) E_i(x),   E_i(x) = 0.1 * up(dropout(relu(down(x))))

(``d -> 64 -> d``, up-projection zero-initialised, dropout 0.1). The gates
``g`` come from a noisy top-2 router on the first (CLS / start-of-text) token,
one router ``(W_gate, W_noise)`` per task::

    clean = x W_gate,  noisy = clean + N(0, 1) * (softplus(x W_noise) + 1e-2)  (training only)
    g = softmax over the top-k logits, scattered back into [B, E] (zeros elsewhere)

Only experts and routers train. After each task the ``freeze_top`` experts its
router picked most often in each block are frozen for good ("activate-freeze").

**DDAS** (distribution-discriminative auto-selector): after each task a small
autoencoder (``D -> 100 -> D``, ReLU then sigmoid, MSE) learns to reconstruct
the frozen image features of that task's training data. At test time the
task whose autoencoder reconstructs the input best is chosen and its router
is used in both towers; when even the best reconstruction error is above the
threshold, or when the autoencoder of the reference (pre-training-like) data
wins, the input goes to the untouched zero-shot model (attachments off).

What the released code does and this module follows by default (the paper's
reading is a named option where they differ):

- experts and routers read the block's residual stream ``x`` (not ``LN x``):
  ``expert_input="residual"``; ``"normalized"`` feeds them the MLP's input;
- the router reads token 0 in both towers (in the causal text tower that token
  is the same for every prompt, so all class prompts share their experts);
- routing counts for activate-freeze are taken over the training forwards of
  the task, both towers separately, top-2 per block;
- DDAS picks one task per test *batch* (the mean reconstruction error of the
  batch, ``ddas_granularity="batch"``); ``"sample"`` decides per input as the
  paper describes;
- DDAS has an extra autoencoder trained on reference data (TinyImageNet in the
  code; the benchmark's reference split here) whose win means zero-shot;
- the autoencoders train with Adam (weight decay 1e-4) whose learning rate is
  ``0.01 * 0.1 ** (epoch // 10)``, 300 iterations per task (1000 for the
  reference one);
- the code's features are a frozen ImageNet AlexNet's conv5 map through a
  sigmoid; no such weights ship here, so the features are the frozen CLIP
  image embeddings, L2-normalised and scaled by ``sqrt(D)``, through a sigmoid.
  The code's threshold (0.0655) is calibrated for AlexNet features;
  ``ddas_threshold=None`` calibrates one threshold per autoencoder instead
  (the ``ddas_quantile`` of its training errors).
- the load-balancing loss (``cv_squared``) is computed by the released code but
  never added to the loss; it is not used here either.
- the class-incremental code (CIFAR-100) uses 2 experts, one router shared by
  all tasks, no activate-freeze and no DDAS, and keeps the gating noise at
  evaluation: ``num_experts=2, routers="shared", freeze_top=0, ddas=False,
  noise_at_eval=True`` (the shipped recipes do so).

Under ``torchrun`` (docs/scaling.md) the routing counts of a task are summed over the
ranks before activate-freeze (blocks whose inputs every rank ran whole, such as the text
tower on the class prompts, keep theirs), so every rank freezes the experts of a
1-process run; DDAS trains on the whole experience on every rank. The router noise and
the expert dropout are per-sample draws made for the global minibatch on every rank, each
rank keeping its own samples' rows (:func:`avalanche_mm.distributed.sharded_randn_like`,
:func:`~avalanche_mm.distributed.sharded_dropout_mask`): the draws of a 1-process run with
the same global batch, draw for draw. The expert dropout draws one mask per (sample,
selected expert) for the whole minibatch (one draw per layer, not one per expert on its
routed rows): the same distribution as the released code's ``nn.Dropout`` inside each expert.

:class:`MoEAdaptersPlugin` holds the mechanisms; :class:`MoEAdapters` is the
fine-tuning recipe (:class:`~avalanche_mm.strategies.FineTune`) with it.
"""

from __future__ import annotations

import contextlib
import math
from typing import Annotated, Any, Dict, List, Literal, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from avalanche.evaluation import PluginMetric
from torch import Tensor, nn

from avalanche_mm.data.batch import batch_size as _batch_size
from avalanche_mm.data.batch import index_batch
from avalanche_mm.models.attach import AdapterSet, MixtureOfAdapters, attach_adapters
from avalanche_mm.registry import Range

from .finetune import FineTune, find_backbone
from .registry import BuildContext, CheckContext, register_method

#: key of the adapters under ``backbone.attachments``
ATTACHMENT_NAME = "moe_adapters"
#: route of inputs sent to the untouched zero-shot model
ZERO_SHOT = -1


# ---------------------------------------------------------------------------
# DDAS
# ---------------------------------------------------------------------------
class DDASAutoencoder(nn.Module):
    """``sigmoid(W2 relu(W1 x))``: the released code's one-hidden-layer autoencoder.

    :param dim: feature width.
    :param code_dims: width of the code (100 in the code).
    """

    def __init__(self, *, dim: int, code_dims: int = 100):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, code_dims), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(code_dims, dim), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))

    def errors(self, x: Tensor) -> Tensor:
        """Per-sample reconstruction error (mean squared error over features) ``[B]``."""
        return (self(x) - x).pow(2).mean(dim=1)


class DDAS(nn.Module):
    """Autoencoders per task (+ one on reference data) and the selection rule.

    ``trained[t]`` says whether task ``t``'s autoencoder exists; index
    ``num_tasks`` is the reference autoencoder. ``thresholds[t]`` holds the
    calibrated thresholds (``threshold=None``).

    :param dim: feature width.
    :param num_tasks: number of tasks.
    :param code_dims: autoencoder code width.
    :param threshold: zero-shot threshold on the best error (None: per-autoencoder calibrated).
    :param granularity: ``"batch"`` (code) or ``"sample"`` (paper).
    """

    def __init__(self, *, dim: int, num_tasks: int, code_dims: int = 100,
                 threshold: Optional[float] = 0.0655, granularity: str = "batch"):
        super().__init__()
        self.num_tasks = int(num_tasks)
        self.autoencoders = nn.ModuleList(
            DDASAutoencoder(dim=dim, code_dims=code_dims) for _ in range(num_tasks + 1)
        )
        self.register_buffer("trained", torch.zeros(num_tasks + 1, dtype=torch.bool))
        self.register_buffer("thresholds", torch.full((num_tasks + 1,), float("inf")))
        self.threshold = threshold
        self.granularity = granularity

    @property
    def reference_index(self) -> int:
        return self.num_tasks

    @staticmethod
    def features(raw: Tensor) -> Tensor:
        """DDAS input from frozen image embeddings ``[B, D]``: ``sigmoid(sqrt(D) * x / |x|)``."""
        raw = raw.float()
        return torch.sigmoid(F.normalize(raw, dim=-1) * math.sqrt(raw.shape[-1]))

    @torch.no_grad()
    def errors(self, feats: Tensor) -> Tuple[List[int], Tensor]:
        """Trained autoencoder indices and their per-sample errors ``[A, B]``."""
        idx = [i for i in range(len(self.autoencoders)) if bool(self.trained[i])]
        if not idx:
            return [], feats.new_zeros(0, feats.shape[0])
        return idx, torch.stack([self.autoencoders[i].errors(feats) for i in idx])

    @torch.no_grad()
    def select(self, feats: Tensor) -> Tensor:
        """Route per input ``[B]``: a task index, or :data:`ZERO_SHOT`."""
        n = feats.shape[0]
        idx, errs = self.errors(feats)
        if not idx:
            return torch.full((n,), ZERO_SHOT, dtype=torch.long, device=feats.device)
        if self.granularity == "batch":
            errs = errs.mean(dim=1, keepdim=True).expand(-1, n)
        best_err, best = errs.min(dim=0)
        chosen = torch.as_tensor(idx, device=feats.device)[best]
        if self.threshold is not None:
            limit = torch.full_like(best_err, float(self.threshold))
        else:
            limit = self.thresholds.to(feats.device)[chosen]
        zero = (chosen == self.reference_index) | (best_err > limit)
        return torch.where(zero, torch.full_like(chosen, ZERO_SHOT), chosen)


def _train_autoencoder(ae: DDASAutoencoder, feats: Tensor, *, iterations: int, batch_size: int,
                       lr: float, lr_decay_epochs: int, weight_decay: float, generator: torch.Generator) -> None:
    """The code's recipe: Adam, lr ``lr * 0.1 ** (epoch // lr_decay_epochs)``, MSE."""
    ae.train()
    opt = torch.optim.Adam(ae.parameters(), lr=lr, weight_decay=weight_decay)
    n = feats.shape[0]
    bs = min(batch_size, n)
    per_epoch = max(1, math.ceil(n / bs))
    perm = torch.randperm(n, generator=generator)
    for it in range(iterations):
        epoch, pos = divmod(it, per_epoch)
        if pos == 0:
            perm = torch.randperm(n, generator=generator)
        for g in opt.param_groups:
            g["lr"] = lr * (0.1 ** (epoch // lr_decay_epochs))
        x = feats[perm[pos * bs:(pos + 1) * bs].to(feats.device)]
        loss = F.mse_loss(ae(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ae.eval()


@contextlib.contextmanager
def _zero_shot_view(backbone):
    """Attachments off, without invalidating cached class embeddings of the adapted model.

    The backbone's text-state key holds the on/off flag, so embeddings cached
    while the attachments are off are keyed apart; the generation counter is
    restored on exit because nothing was changed.
    """
    gen = backbone._attach_generation
    with backbone.attachments_disabled():
        yield backbone
    backbone._attach_generation = gen


# ---------------------------------------------------------------------------
# the plugin
# ---------------------------------------------------------------------------
def _images(x: Any, key: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, dict) and key in x:
        return x[key]
    have = sorted(x.keys()) if isinstance(x, dict) else type(x).__name__
    raise KeyError(
        f"MoEAdaptersPlugin: DDAS needs images under '{key}' in the batch to compute frozen "
        f"image features; the batch has {have}. Set image_key= or ddas=False."
    )


class MoEAdaptersPlugin(SupervisedPlugin):
    """Mixture-of-experts adapters with per-task routers, activate-freeze and DDAS.

    Call :meth:`setup` with the model before building the optimizer (the
    :class:`MoEAdapters` strategy does): it attaches the adapters (freezing
    the backbone). See the module docstring for the mechanisms.

    :param num_experts: experts per block (22 in the MTIL code).
    :param top_k: experts per input.
    :param bottleneck: expert hidden width.
    :param scale: expert output multiplier.
    :param dropout: expert dropout.
    :param towers: towers that get experts.
    :param num_tasks: number of tasks (routers and autoencoders are allocated up front).
    :param routers: ``"per_task"`` (MTIL code) or ``"shared"`` (one router, class-incremental code).
    :param freeze_top: experts frozen per block after each task (0: no activate-freeze).
    :param expert_input: ``"residual"`` (code: the block's residual stream) or ``"normalized"`` (``LN x``).
    :param noise_at_eval: keep the gating noise at evaluation.
    :param ddas: use DDAS at evaluation (else the last trained task's router for every input).
    :param ddas_threshold: zero-shot threshold on the best reconstruction error (None: calibrated).
    :param ddas_quantile: quantile of an autoencoder's training errors used as its threshold when calibrated.
    :param ddas_code_dims: autoencoder code width.
    :param ddas_iterations: autoencoder training iterations per task.
    :param ddas_reference_iterations: iterations of the reference autoencoder (0: none).
    :param ddas_lr: autoencoder learning rate.
    :param ddas_lr_decay_epochs: the learning rate is divided by 10 every this many epochs.
    :param ddas_weight_decay: autoencoder weight decay.
    :param ddas_batch_size: autoencoder batch size.
    :param ddas_granularity: ``"batch"`` (code) or ``"sample"`` (paper).
    :param reference_images: reference data for the reference autoencoder: images
        ``[N, 3, H, W]`` or a dataset of ``(x, ...)`` samples holding images (or None).
    :param ddas_reference_size: at most this many reference samples (a seeded random subset).
    :param image_key: modality name of the images in batches.
    :param seed: seed of the autoencoder training.
    """

    def __init__(
        self,
        *,
        num_experts: int = 22,
        top_k: int = 2,
        bottleneck: int = 64,
        scale: float = 0.1,
        dropout: float = 0.1,
        towers: Sequence[str] = ("vision", "text"),
        num_tasks: Optional[int] = None,
        routers: str = "per_task",
        freeze_top: int = 2,
        expert_input: str = "residual",
        noise_at_eval: bool = False,
        ddas: bool = True,
        ddas_threshold: Optional[float] = 0.0655,
        ddas_quantile: float = 0.99,
        ddas_code_dims: int = 100,
        ddas_iterations: int = 300,
        ddas_reference_iterations: int = 1000,
        ddas_lr: float = 0.01,
        ddas_lr_decay_epochs: int = 10,
        ddas_weight_decay: float = 1e-4,
        ddas_batch_size: int = 64,
        ddas_granularity: str = "batch",
        reference_images: Any = None,
        ddas_reference_size: int = 5000,
        image_key: str = "image",
        seed: int = 0,
    ):
        super().__init__()
        for name, value in (("num_experts", num_experts), ("top_k", top_k), ("bottleneck", bottleneck),
                            ("ddas_code_dims", ddas_code_dims), ("ddas_iterations", ddas_iterations),
                            ("ddas_lr_decay_epochs", ddas_lr_decay_epochs), ("ddas_batch_size", ddas_batch_size)):
            _int(name, value, 1)
        _int("freeze_top", freeze_top, 0)
        _int("ddas_reference_iterations", ddas_reference_iterations, 0)
        if num_tasks is not None:
            _int("num_tasks", num_tasks, 1)
        if top_k > num_experts:
            raise ValueError(f"MoE-Adapters: top_k={top_k} exceeds num_experts={num_experts}; expected top_k <= num_experts.")
        if freeze_top > num_experts:
            raise ValueError(f"MoE-Adapters: freeze_top={freeze_top} exceeds num_experts={num_experts}.")
        _num("scale", scale, gt=0.0)
        _num("dropout", dropout, ge=0.0, lt=1.0)
        _num("ddas_lr", ddas_lr, gt=0.0)
        _num("ddas_weight_decay", ddas_weight_decay, ge=0.0)
        _num("ddas_quantile", ddas_quantile, gt=0.0, le=1.0)
        if ddas_threshold is not None:
            _num("ddas_threshold", ddas_threshold, ge=0.0)
        towers = tuple(towers)
        if not towers or any(t not in ("vision", "text") for t in towers) or len(set(towers)) != len(towers):
            raise ValueError(f"MoE-Adapters: towers must be a non-empty subset of ('vision', 'text'), got {towers!r}.")
        for name, value, choices in (("routers", routers, ("per_task", "shared")),
                                     ("expert_input", expert_input, ("residual", "normalized")),
                                     ("ddas_granularity", ddas_granularity, ("batch", "sample"))):
            if value not in choices:
                raise ValueError(f"MoE-Adapters: {name} must be one of {choices}, got {value!r}.")
        if isinstance(reference_images, Tensor) and reference_images.dim() != 4:
            raise ValueError(
                f"MoE-Adapters: reference_images as a tensor must be [N, 3, H, W], got shape {tuple(reference_images.shape)}."
            )
        if reference_images is not None and not isinstance(reference_images, Tensor) and not hasattr(reference_images, "__getitem__"):
            raise TypeError("MoE-Adapters: reference_images must be a tensor [N, 3, H, W], a dataset or None.")
        _int("ddas_reference_size", ddas_reference_size, 1)
        self.ddas_reference_size = int(ddas_reference_size)
        self.num_experts = int(num_experts)
        self.top_k = int(top_k)
        self.bottleneck = int(bottleneck)
        self.scale = float(scale)
        self.dropout = float(dropout)
        self.towers = towers
        self.num_tasks = num_tasks
        self.routers = routers
        self.freeze_top = int(freeze_top)
        self.expert_input = expert_input
        self.noise_at_eval = bool(noise_at_eval)
        self.use_ddas = bool(ddas)
        self.ddas_threshold = None if ddas_threshold is None else float(ddas_threshold)
        self.ddas_quantile = float(ddas_quantile)
        self.ddas_code_dims = int(ddas_code_dims)
        self.ddas_iterations = int(ddas_iterations)
        self.ddas_reference_iterations = int(ddas_reference_iterations)
        self.ddas_lr = float(ddas_lr)
        self.ddas_lr_decay_epochs = int(ddas_lr_decay_epochs)
        self.ddas_weight_decay = float(ddas_weight_decay)
        self.ddas_batch_size = int(ddas_batch_size)
        self.ddas_granularity = ddas_granularity
        self.reference_images = reference_images
        self.image_key = image_key
        self.seed = int(seed)
        self.adapters: Optional[AdapterSet] = None
        self.ddas: Optional[DDAS] = None
        self.trained_tasks: List[int] = []
        # per-experience state
        self.current_router = 0
        self._usage_start: Dict[str, Tensor] = {}
        self._usage_full: Dict[str, Tensor] = {}
        self._router_snapshot: Dict[str, Tuple[Tensor, Tensor]] = {}
        self._grad_hooks: List[Any] = []
        # evaluation routing
        self.routes: Optional[Tensor] = None
        self._route_ctx: Optional[contextlib.ExitStack] = None
        self.route_counts: Dict[int, int] = {}
        self.last_freeze: Dict[str, List[int]] = {}

    # -- setup ---------------------------------------------------------------
    @property
    def num_routers(self) -> int:
        return 1 if self.routers == "shared" else int(self.num_tasks)

    def setup(self, model: nn.Module) -> AdapterSet:
        """Attach the experts to the backbone of ``model`` (once) and freeze the backbone."""
        backbone = find_backbone(model)
        if self.adapters is not None:
            return self.adapters
        if (self.routers == "per_task" or self.use_ddas) and self.num_tasks is None:
            raise ValueError(
                "MoE-Adapters: routers='per_task' and DDAS allocate one router / autoencoder per task "
                "up front; give num_tasks= (the number of training experiences)."
            )
        if ATTACHMENT_NAME in backbone.attachments:
            raise ValueError(
                f"MoE-Adapters: the backbone {backbone.name} already has an attachment "
                f"'{ATTACHMENT_NAME}'; build the strategy on a fresh model."
            )
        self.adapters = attach_adapters(
            backbone,
            name=ATTACHMENT_NAME,
            towers=self.towers,
            num_experts=self.num_experts,
            bottleneck=self.bottleneck,
            scale=self.scale,
            dropout=self.dropout,
            adapter_input=self.expert_input,
            top_k=self.top_k,
            num_routers=self.num_routers,
            noise_at_eval=self.noise_at_eval,
            freeze_base=True,
        )
        if self.use_ddas:
            self.ddas = DDAS(
                dim=int(backbone.embed_dim), num_tasks=int(self.num_tasks or 1), code_dims=self.ddas_code_dims,
                threshold=self.ddas_threshold, granularity=self.ddas_granularity,
            ).to(backbone.device)
        return self.adapters

    def mixtures(self) -> Dict[str, MixtureOfAdapters]:
        return self.adapters.mixtures() if self.adapters is not None else {}

    def _router_of(self, task: int) -> int:
        if self.routers == "shared":
            return 0
        if not 0 <= task < self.num_routers:
            raise ValueError(
                f"MoE-Adapters: experience {task} has no router; routers were allocated for "
                f"num_tasks={self.num_tasks} tasks."
            )
        return task

    # -- training --------------------------------------------------------------
    def before_training_exp(self, strategy, **kwargs):
        self.setup(strategy.model)
        backbone = find_backbone(strategy.model)
        backbone.freeze()
        task = int(strategy.experience.current_experience)
        r = self._router_of(task)
        self.current_router = r
        self.adapters.set_active_router(r)
        self.adapters.enabled = True
        self._remove_hooks()
        self._usage_start, self._router_snapshot, self._usage_full = {}, {}, {}
        for key, moe in self.mixtures().items():
            moe.sync_frozen()
            moe.w_gate.requires_grad_(True)
            moe.w_noise.requires_grad_(True)
            self._usage_start[key] = moe.expert_usage[r].clone()
            self._usage_full[key] = moe.expert_usage.detach().clone()
            self._router_snapshot[key] = (moe.w_gate.detach().clone(), moe.w_noise.detach().clone())
            mask = torch.zeros(moe.num_routers, 1, 1, device=moe.w_gate.device)
            mask[r] = 1.0
            for p in (moe.w_gate, moe.w_noise):  # only the current task's router gets gradient
                self._grad_hooks.append(p.register_hook(lambda g, m=mask: g * m.to(g.dtype)))

    def before_training_iteration(self, strategy, **kwargs):
        # a periodic evaluation inside the experience may have selected another route
        if self.adapters.active_router != self.current_router:
            self.adapters.set_active_router(self.current_router)

    def after_update(self, strategy, **kwargs):
        """Other tasks' routers stay bit-identical (weight decay or Adam moments would move them)."""
        r = self.current_router
        with torch.no_grad():
            for key, moe in self.mixtures().items():
                gate, noise = self._router_snapshot[key]
                keep = torch.ones(moe.num_routers, dtype=torch.bool)
                keep[r] = False
                moe.w_gate[keep] = gate[keep].to(moe.w_gate.device)
                moe.w_noise[keep] = noise[keep].to(moe.w_noise.device)

    def after_training_exp(self, strategy, **kwargs):
        self._remove_hooks()
        task = int(strategy.experience.current_experience)
        self.reduce_usage()
        self.activate_freeze()
        if self.use_ddas:
            self.fit_ddas(strategy, task)
        if task not in self.trained_tasks:
            self.trained_tasks.append(task)
        self._usage_start, self._router_snapshot = {}, {}

    def reduce_usage(self) -> None:
        """Under ``torchrun``: make the task's routing counts those of the global batches.

        Each rank counted the routes of its shard; the counts added during the task are
        summed over the ranks (one collective), except in blocks whose inputs every rank
        processed whole (the text tower on the class prompts: the same counts on every
        rank), which keep them. Every rank then freezes the same experts, those a
        1-process run with the same global batches freezes.
        """
        from avalanche_mm import distributed as _dist

        if not _dist.is_distributed() or not self._usage_full:
            return
        mix = self.mixtures()
        keys = [k for k in sorted(mix) if k in self._usage_full]
        deltas, groups, start = [], [], 0
        for k in keys:
            d = (mix[k].expert_usage.detach() - self._usage_full[k].to(mix[k].expert_usage.device)).reshape(-1).cpu()
            deltas.append(d)
            groups.append((start, start + d.numel()))
            start += d.numel()
        total = _dist.replicated_or_summed(torch.cat(deltas).double(), groups)
        with torch.no_grad():
            for k, (a, b) in zip(keys, groups):
                moe = mix[k]
                base = self._usage_full[k].to(moe.expert_usage.device)
                moe.expert_usage.copy_(base + total[a:b].view_as(base).to(base.dtype).to(base.device))

    def activate_freeze(self) -> Dict[str, List[int]]:
        """Freeze the ``freeze_top`` experts the current router used most during the task."""
        self.last_freeze = {}
        if self.freeze_top == 0:
            return self.last_freeze
        r = self.current_router
        for key, moe in self.mixtures().items():
            start = self._usage_start.get(key, torch.zeros_like(moe.expert_usage[r]))
            counts = moe.expert_usage[r] - start.to(moe.expert_usage.device)
            top = torch.topk(counts, self.freeze_top).indices.tolist()
            moe.freeze_experts(top)
            self.last_freeze[key] = sorted(top)
        return self.last_freeze

    def _remove_hooks(self) -> None:
        for h in self._grad_hooks:
            h.remove()
        self._grad_hooks = []

    # -- DDAS ------------------------------------------------------------------
    @torch.no_grad()
    def frozen_features(self, backbone, images: Tensor) -> Tensor:
        """DDAS features of ``images`` from the untouched image tower."""
        with _zero_shot_view(backbone):
            raw = backbone.encode_image(images.to(backbone.device), normalize=False)
        return DDAS.features(raw)

    def _dataset_features(self, strategy, dataset) -> Tensor:
        from torch.utils.data import DataLoader

        from .template import resolve_collate

        backbone = find_backbone(strategy.model)
        was_training = backbone.training
        backbone.eval()
        loader = DataLoader(dataset, batch_size=max(1, strategy.eval_mb_size), shuffle=False,
                            collate_fn=resolve_collate(dataset, strategy))
        feats = []
        for batch in loader:
            feats.append(self.frozen_features(backbone, _images(batch[0], self.image_key)))
        backbone.train(was_training)
        return torch.cat(feats)

    def _fit(self, index: int, feats: Tensor, iterations: int, salt: int) -> None:
        ae = self.ddas.autoencoders[index]
        gen = torch.Generator().manual_seed(self.seed * 1000003 + salt)
        with torch.enable_grad():
            _train_autoencoder(ae, feats, iterations=iterations, batch_size=self.ddas_batch_size, lr=self.ddas_lr,
                               lr_decay_epochs=self.ddas_lr_decay_epochs, weight_decay=self.ddas_weight_decay,
                               generator=gen)
        with torch.no_grad():
            errs = ae.errors(feats)
            self.ddas.thresholds[index] = torch.quantile(errs.float(), self.ddas_quantile)
            self.ddas.trained[index] = True

    def _reference_features(self, strategy) -> Tensor:
        ref = self.reference_images
        n = len(ref)
        gen = torch.Generator().manual_seed(self.seed * 7919 + 17)
        keep = torch.randperm(n, generator=gen)[: self.ddas_reference_size].sort().values if n > self.ddas_reference_size else None
        if isinstance(ref, Tensor):
            images = ref if keep is None else ref[keep]
            backbone = find_backbone(strategy.model)
            return torch.cat([self.frozen_features(backbone, images[i:i + 256]) for i in range(0, len(images), 256)])
        return self._dataset_features(strategy, ref if keep is None else _SubsetWithCollate(ref, keep.tolist()))

    def fit_ddas(self, strategy, task: int) -> None:
        """Train task ``task``'s autoencoder (and the reference one, once) on frozen features."""
        backbone = find_backbone(strategy.model)
        if not 0 <= task < self.ddas.num_tasks:
            raise ValueError(f"MoE-Adapters: DDAS has autoencoders for {self.ddas.num_tasks} tasks, got task {task}.")
        ref = self.ddas.reference_index
        if self.reference_images is not None and self.ddas_reference_iterations > 0 and not bool(self.ddas.trained[ref]):
            self._fit(ref, self._reference_features(strategy), self.ddas_reference_iterations, salt=10**6)
        self._fit(task, self._dataset_features(strategy, strategy.experience.dataset.eval()), self.ddas_iterations, salt=task)

    def select(self, strategy) -> Tensor:
        """Routes ``[B]`` of the current minibatch (task index or :data:`ZERO_SHOT`)."""
        n = _batch_size(strategy.mb_x)
        if not self.trained_tasks:  # nothing learned yet: the pretrained model
            return torch.full((n,), ZERO_SHOT, dtype=torch.long)
        if not self.use_ddas:
            return torch.full((n,), self._router_of(self.trained_tasks[-1]), dtype=torch.long)
        backbone = find_backbone(strategy.model)
        feats = self.frozen_features(backbone, _images(strategy.mb_x, self.image_key))
        routes = self.ddas.select(feats).cpu()
        if self.routers == "shared":
            routes = torch.where(routes == ZERO_SHOT, routes, torch.zeros_like(routes))
        return routes

    @contextlib.contextmanager
    def route(self, strategy, route: int):
        """Context: the model as route ``route`` sees it (a task's router, or zero-shot)."""
        backbone = find_backbone(strategy.model)
        if route == ZERO_SHOT:
            with _zero_shot_view(backbone):
                yield
            return
        # left selected afterwards: consecutive batches on the same route keep cached class embeddings
        self.adapters.set_active_router(self._router_of(int(route)))
        yield

    def before_eval_exp(self, strategy, **kwargs):
        self.setup(strategy.model)
        self.route_counts = {}

    def before_eval_forward(self, strategy, **kwargs):
        routes = self.select(strategy)
        self.routes = routes
        unique = torch.unique(routes).tolist()
        if len(unique) == 1:  # one route for the batch: applied for the template's forward
            self._route_ctx = contextlib.ExitStack()
            self._route_ctx.enter_context(self.route(strategy, int(unique[0])))

    def after_eval_forward(self, strategy, **kwargs):
        if self._route_ctx is not None:
            self._route_ctx.close()
            self._route_ctx = None

    def after_eval_iteration(self, strategy, **kwargs):
        if self.routes is None:
            return
        # counted once the minibatch is whole: under sharded evaluation (several processes) the
        # routes were chosen on this rank's rows and are gathered (identity otherwise)
        gather = getattr(strategy, "gather_eval_rows", None)
        routes = gather(self.routes) if callable(gather) else self.routes
        for r in routes.tolist():
            self.route_counts[r] = self.route_counts.get(r, 0) + 1

    def after_eval(self, strategy, **kwargs):
        self.routes = None

    def routed_forward(self, strategy, forward) -> Tensor:
        """Forward of a minibatch whose inputs take different routes (``ddas_granularity="sample"``)."""
        routes = self.routes
        x, t = strategy.mb_x, strategy.mb_task_id
        outs: Dict[int, Tuple[Tensor, Tensor]] = {}
        for r in torch.unique(routes).tolist():
            rows = (routes == r).nonzero(as_tuple=True)[0]
            with self.route(strategy, int(r)):
                outs[r] = (rows, forward(index_batch(x, rows.to(t.device) if isinstance(t, Tensor) else rows),
                                         t[rows.to(t.device)] if isinstance(t, Tensor) else t))
        width = max(o.shape[1] for _, o in outs.values())
        fill = float(getattr(strategy.model, "mask_value", -1e4))
        first = next(iter(outs.values()))[1]
        out = first.new_full((len(routes), width), fill)
        for rows, o in outs.values():
            out[rows.to(out.device), : o.shape[1]] = o
        return out

    def route_fractions(self) -> Dict[int, float]:
        """Fraction of the current evaluation experience's inputs per route."""
        n = sum(self.route_counts.values())
        return {r: c / n for r, c in sorted(self.route_counts.items())} if n else {}

    # -- costs -------------------------------------------------------------------
    def parameter_counts(self, model: nn.Module) -> Tuple[int, int]:
        """``(trainable this task, total)``: unfrozen experts + the task's router (+ its autoencoder)."""
        total = sum(p.numel() for p in model.parameters())
        if self.ddas is not None:
            total += sum(p.numel() for p in self.ddas.parameters())
        trainable = 0
        for moe in self.mixtures().values():
            for e, expert in enumerate(moe.experts):
                if not bool(moe.expert_frozen[e]):
                    trainable += sum(p.numel() for p in expert.parameters())
            trainable += 2 * moe.w_gate[0].numel()
        if self.ddas is not None:
            trainable += sum(p.numel() for p in self.ddas.autoencoders[0].parameters())
        return trainable, total

    # -- checkpointing -------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """The autoencoders and the list of trained tasks (experts and routers are in the model)."""
        return {
            "ddas": None if self.ddas is None else {k: v.detach().cpu() for k, v in self.ddas.state_dict().items()},
            "trained_tasks": list(self.trained_tasks),
        }

    def load_state_dict(self, state: Dict[str, Any], *, model: Optional[nn.Module] = None) -> None:
        if model is not None:
            self.setup(model)
        self.trained_tasks = [int(t) for t in state.get("trained_tasks", [])]
        if state.get("ddas") is not None:
            if self.ddas is None:
                raise ValueError("MoE-Adapters: the checkpoint has DDAS autoencoders but this plugin has ddas=False.")
            self.ddas.load_state_dict(state["ddas"])
        for moe in self.mixtures().values():
            moe.sync_frozen()


class _SubsetWithCollate(torch.utils.data.Subset):
    """A subset that keeps the dataset's ``collate_fn``."""

    def __init__(self, dataset, indices):
        super().__init__(dataset, indices)
        self.collate_fn = getattr(dataset, "collate_fn", None)


def _int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"MoE-Adapters: {name} must be an integer >= {minimum}, got {value!r}.")


def _num(name: str, value, *, gt=None, ge=None, lt=None, le=None) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    ok = ok and (gt is None or value > gt) and (ge is None or value >= ge)
    ok = ok and (lt is None or value < lt) and (le is None or value <= le)
    if not ok:
        bounds = [f"> {gt}" if gt is not None else None, f">= {ge}" if ge is not None else None,
                  f"< {lt}" if lt is not None else None, f"<= {le}" if le is not None else None]
        raise ValueError(f"MoE-Adapters: {name} must be a number {' and '.join(b for b in bounds if b)}, got {value!r}.")


# ---------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------
class DDASRouting(PluginMetric[Dict[str, float]]):
    """Where DDAS sent each evaluation experience's inputs.

    Logged after each evaluation experience: ``DDAS_ZeroShot_Exp`` (fraction of
    inputs given to the zero-shot model), ``DDAS_Task<k>_Exp`` (fraction given
    to task ``k``'s router) and ``DDAS_OwnTask_Exp`` (fraction routed to the
    experience's own task, once that task is trained).

    :param plugin: the :class:`MoEAdaptersPlugin` whose routing is reported.
    """

    def __init__(self, plugin: MoEAdaptersPlugin):
        super().__init__()
        self.plugin = plugin
        self._last: Dict[str, float] = {}

    def reset(self) -> None:
        self._last = {}

    def result(self) -> Dict[str, float]:
        return dict(self._last)

    def after_eval_exp(self, strategy) -> List[Any]:
        from avalanche.evaluation.metric_results import MetricValue
        from avalanche.evaluation.metric_utils import get_metric_name

        fr = self.plugin.route_fractions()
        if not fr:
            return []
        task = int(strategy.experience.current_experience)
        out = {"DDAS_ZeroShot_Exp": fr.get(ZERO_SHOT, 0.0)}
        routes = sorted({r for r in fr if r != ZERO_SHOT} | set(self.plugin.trained_tasks))
        if self.plugin.routers == "shared":
            routes = [0] if self.plugin.trained_tasks else []
        for r in routes:  # every route each time (no stale values from an earlier evaluation)
            out[f"DDAS_Task{r}_Exp"] = fr.get(r, 0.0)
        if task in self.plugin.trained_tasks:
            out["DDAS_OwnTask_Exp"] = fr.get(self.plugin._router_of(task) if self.plugin.routers == "shared" else task, 0.0)
        self._last = out
        x = strategy.clock.train_iterations
        return [MetricValue(self, get_metric_name(k, strategy, add_experience=True, add_task=True), v, x) for k, v in out.items()]

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._last = {}

    def __str__(self) -> str:
        return "DDASRouting"


# ---------------------------------------------------------------------------
# the strategy
# ---------------------------------------------------------------------------
class MoEAdapters(FineTune):
    """MoE-Adapters4CL on a frozen CLIP: experts + per-task routers + activate-freeze + DDAS.

    The fine-tuning recipe (:class:`~avalanche_mm.strategies.FineTune`: step
    budget, warm-up + cosine, label smoothing) over the experts and routers
    only. The trainable-parameter counts (unfrozen experts, the task's router
    and its autoencoder per task; their sum over tasks) are logged by
    :class:`~avalanche_mm.metrics.ParameterCount`, the DDAS routing by
    :class:`DDASRouting`, when the strategy has an evaluator.

    :param num_experts: experts per block (22 in the MTIL code, 2 in the class-incremental code).
    :param top_k: experts per input (2).
    :param bottleneck: expert hidden width (64).
    :param scale: expert output multiplier (0.1).
    :param dropout: expert dropout (0.1).
    :param towers: towers that get experts (both).
    :param num_tasks: number of tasks; routers and autoencoders are allocated up front (the CLI sets it from the benchmark).
    :param routers: ``per_task`` (one router per task, MTIL code) or ``shared`` (one router, class-incremental code).
    :param freeze_top: experts frozen per block after each task by their routing counts (2; 0 turns activate-freeze off).
    :param expert_input: ``residual`` (code: experts read the block's residual stream) or ``normalized`` (the MLP's input).
    :param noise_at_eval: keep the router noise at evaluation (the class-incremental code does).
    :param ddas: choose the router (or zero-shot) at test time with DDAS; off: the last task's router.
    :param ddas_threshold: zero-shot threshold on the best reconstruction error (0.0655 in the code, for its AlexNet features); null: one calibrated threshold per autoencoder.
    :param ddas_quantile: with ddas_threshold null, the quantile of an autoencoder's training errors used as its threshold.
    :param ddas_code_dims: autoencoder code width (100).
    :param ddas_iterations: autoencoder training iterations per task (300).
    :param ddas_reference_iterations: iterations of the reference-data autoencoder whose win means zero-shot (1000; 0: none).
    :param ddas_lr: autoencoder learning rate (0.01, divided by 10 every ddas_lr_decay_epochs epochs).
    :param ddas_lr_decay_epochs: epochs between learning-rate divisions.
    :param ddas_weight_decay: autoencoder weight decay (1e-4).
    :param ddas_batch_size: autoencoder batch size (64).
    :param ddas_granularity: ``batch`` (code: one decision per test batch) or ``sample`` (paper: per input).
    :param reference_images: images (tensor or dataset) for the reference autoencoder (the CLI passes the benchmark's reference split).
    :param ddas_reference_size: at most this many reference images for the reference autoencoder (a seeded random subset).
    :param image_key: modality name of the images.
    :param seed: seed of the autoencoder training.
    :param base_kwargs: the arguments of :class:`~avalanche_mm.strategies.FineTune`.
    """

    def __init__(
        self,
        *,
        num_experts: Annotated[int, Range(ge=1)] = 22,
        top_k: Annotated[int, Range(ge=1)] = 2,
        bottleneck: Annotated[int, Range(ge=1)] = 64,
        scale: Annotated[float, Range(gt=0.0)] = 0.1,
        dropout: Annotated[float, Range(ge=0.0, lt=1.0)] = 0.1,
        towers: List[str] = ("vision", "text"),
        num_tasks: Optional[int] = None,
        routers: Literal["per_task", "shared"] = "per_task",
        freeze_top: Annotated[int, Range(ge=0)] = 2,
        expert_input: Literal["residual", "normalized"] = "residual",
        noise_at_eval: bool = False,
        ddas: bool = True,
        ddas_threshold: Optional[Annotated[float, Range(ge=0.0)]] = 0.0655,
        ddas_quantile: Annotated[float, Range(gt=0.0, le=1.0)] = 0.99,
        ddas_code_dims: Annotated[int, Range(ge=1)] = 100,
        ddas_iterations: Annotated[int, Range(ge=1)] = 300,
        ddas_reference_iterations: Annotated[int, Range(ge=0)] = 1000,
        ddas_lr: Annotated[float, Range(gt=0.0)] = 0.01,
        ddas_lr_decay_epochs: Annotated[int, Range(ge=1)] = 10,
        ddas_weight_decay: Annotated[float, Range(ge=0.0)] = 1e-4,
        ddas_batch_size: Annotated[int, Range(ge=1)] = 64,
        ddas_granularity: Literal["batch", "sample"] = "batch",
        reference_images: Any = None,
        ddas_reference_size: Annotated[int, Range(ge=1)] = 5000,
        image_key: str = "image",
        seed: int = 0,
        plugins: Optional[List] = None,
        **base_kwargs,
    ):
        self.moe_plugin = MoEAdaptersPlugin(
            num_experts=num_experts, top_k=top_k, bottleneck=bottleneck, scale=scale, dropout=dropout,
            towers=towers, num_tasks=num_tasks, routers=routers, freeze_top=freeze_top,
            expert_input=expert_input, noise_at_eval=noise_at_eval, ddas=ddas, ddas_threshold=ddas_threshold,
            ddas_quantile=ddas_quantile, ddas_code_dims=ddas_code_dims, ddas_iterations=ddas_iterations,
            ddas_reference_iterations=ddas_reference_iterations, ddas_lr=ddas_lr,
            ddas_lr_decay_epochs=ddas_lr_decay_epochs, ddas_weight_decay=ddas_weight_decay,
            ddas_batch_size=ddas_batch_size, ddas_granularity=ddas_granularity,
            reference_images=reference_images, ddas_reference_size=ddas_reference_size, image_key=image_key, seed=seed,
        )
        model = base_kwargs.get("model")
        if model is None:
            raise ValueError("MoEAdapters needs model= (a CLIP classifier holding a VisionLanguageBackbone).")
        self.moe_plugin.setup(model)
        super().__init__(plugins=list(plugins or []) + [self.moe_plugin], **base_kwargs)
        self._add_metrics()

    def _add_metrics(self) -> None:
        """The DDAS routing metric joins the evaluator. Parameter counts come from
        :class:`~avalanche_mm.metrics.ParameterCount` (config: ``evaluation.metrics.parameters``),
        which asks this strategy's plugin for its share (``parameter_counts``)."""
        evaluator = getattr(self, "evaluator", None)
        metrics = getattr(evaluator, "metrics", None)
        if metrics is None:
            return
        if self.moe_plugin.use_ddas:
            metrics.append(DDASRouting(self.moe_plugin))

    def forward(self):
        routes = self.moe_plugin.routes
        if self.is_training or routes is None or len(torch.unique(routes)) <= 1:
            return super().forward()
        parent = super(MoEAdapters, self)

        def fwd(x, t):
            self.mbatch[0], saved = x, self.mbatch[0]
            self.mbatch[-1], saved_t = t, self.mbatch[-1]
            try:
                return parent.forward()
            finally:
                self.mbatch[0], self.mbatch[-1] = saved, saved_t

        return self.moe_plugin.routed_forward(self, fwd)


# ---------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------
def _image_modalities(ctx: CheckContext) -> Optional[Sequence[str]]:
    if ctx.bundle is not None:
        return tuple(getattr(ctx.bundle, "modalities", ()) or ())
    params = (ctx.benchmark or {}).get("params") or {}
    mods = params.get("modalities") if isinstance(params, dict) else None
    return tuple(mods) if isinstance(mods, (list, tuple)) else None


def _check(ctx: CheckContext, params: dict) -> List[str]:
    out: List[str] = []
    model = (ctx.model or {}).get("backbone") or (ctx.model or {}).get("name") or "?"
    where = f"moe-adapters on model {model!r} ({ctx.model_key or 'model'})"
    sizes = ("num_experts", "top_k", "bottleneck", "ddas_code_dims", "ddas_iterations", "ddas_batch_size")
    for name in sizes:
        v = params.get(name)
        if isinstance(v, int) and not isinstance(v, bool) and v < 1:
            out.append(f"{ctx.key}.{name}: got {v}, {where} needs a positive size")
    k, e = params.get("top_k"), params.get("num_experts")
    if isinstance(k, int) and isinstance(e, int) and e >= 1 and k > e:
        out.append(
            f"{ctx.key}.top_k: got {k}, but {where} has num_experts={e} per block; it needs top_k <= num_experts"
        )
    f = params.get("freeze_top")
    if isinstance(f, int) and isinstance(e, int) and e >= 1 and f > e:
        out.append(f"{ctx.key}.freeze_top: got {f}, but {where} has num_experts={e}; it needs freeze_top <= num_experts")
    towers = params.get("towers") or []
    if not towers or any(t not in ("vision", "text") for t in towers):
        out.append(f"{ctx.key}.towers: got {towers!r}, {where} needs a non-empty subset of ['vision', 'text']")
    if params.get("ddas", True):
        mods = _image_modalities(ctx)
        if mods is not None and params.get("image_key", "image") not in mods:
            out.append(
                f"{ctx.key}.ddas: {where} needs frozen image features for DDAS, but the benchmark's samples "
                f"have modalities {list(mods)} (no '{params.get('image_key', 'image')}'); set ddas: false or use "
                "a benchmark with images"
            )
        if "vision" not in towers and towers:
            pass  # DDAS reads the untouched image tower; experts may sit in the text tower only
    return out


@register_method(
    "moe-adapters",
    summary="MoE-Adapters4CL: per-task routed adapter experts on frozen CLIP, activate-freeze, DDAS zero-shot selector",
    params_from=MoEAdapters,
    exclude=("num_tasks", "reference_images", "seed"),
    model_kinds=("clip",),
    family="architecture",
    reference="Yu et al., CVPR 2024",
    check=_check,
    distributed=True,
)
def _build(ctx: BuildContext, params: dict):
    bundle = ctx.bundle
    n_tasks = int(bundle.n_experiences) if bundle is not None else None
    ref = getattr(bundle, "reference", None)
    images = getattr(ref, "images", None)  # a tensor (worlds) or a lazy dataset (real data)
    kw = ctx.common_kwargs(MoEAdapters)
    kw.update(ctx.schedule_kwargs())  # FineTune's recipe arguments (taken through **base_kwargs)
    return MoEAdapters(**kw, **params, num_tasks=n_tasks,
                       reference_images=images)


__all__ = ["MoEAdaptersPlugin", "MoEAdapters", "DDAS", "DDASAutoencoder", "DDASRouting", "ZERO_SHOT"]
