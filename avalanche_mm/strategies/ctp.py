"""CTP: Compatible momentum contrast with Topology Preservation (Zhu et al., "CTP:
Towards Vision-Language Continual Pretraining via Compatible Momentum Contrast and
Topology Preservation", ICCV 2023).

On each minibatch of phase ``t > 0`` (released code: KevinLight831/CTP,
``models/clip_pretrain.py`` ``CTP`` and ``train/train_CTP.py``):

1. **in-batch contrast**: ``0.5 (CE_i2t + CE_t2i)`` on the current model's
   similarities (the strategy's criterion on the RetrievalHead's logits);
2. **compatible momentum contrast**: before the forward of the momentum model,
   ``theta_m <- m theta_m + (1 - m)/2 theta + (1 - m)/2 theta_prev`` with
   ``m = 0.9`` (``theta_prev`` the frozen model of the previous phase, the
   momentum model re-initialised from the model at each phase start). The
   current image (text) features are contrasted with the momentum model's
   text (image) keys of the batch plus a FIFO queue of the last ``queue_size``
   momentum keys (one-hot targets on the batch's own keys, temperature
   ``tau = 0.07``); the batch's momentum keys are then enqueued;
3. **topology preservation**: ``KL(softmax(S_prev / tau) || softmax(S_cur / tau))``
   averaged over rows (``batchmean``) on the in-batch image-text, text-image,
   image-image and text-text cosine similarity matrices, the self-similarity
   of the last two masked out; cross-modal and intra-modal pairs each averaged:
   ``0.5 (KL_i2t + KL_t2i) + 0.5 (KL_i2i + KL_t2t)``.

``loss = L_ita + L_momentum + L_topology`` (the code adds them unweighted; the
weights are options here). In the first phase there is no previous model: the
code's ``CTP_init`` updates the momentum model from the current model only
(``m = 0.995``) and adds the momentum contrast to the in-batch term, which is
what ``init_momentum`` does here. The queue persists across phases, and starts
as random unit vectors as in the code (``queue_init="random"``; ``"empty"``
uses only real keys). The masked-language-modelling terms of the code's BERT
text encoder have no counterpart in a CLIP backbone and are left out.

Under ``torchrun`` (docs/scaling.md) the momentum keys of the global batch are
all-gathered (as MoCo's ``concat_all_gather``; no gradient): they are every rank's
in-batch negatives and all of them are enqueued, in the order of a 1-process run, so
the queue is identical on every rank. The topology terms use the global batch's
similarity matrices (this rank's rows against every rank's features, gathered with
their gradient), and the in-batch InfoNCE of :class:`ContrastiveFineTune` does the same:
the step is the 1-process step on the global batch. (ALBEF-style code under DDP
contrasts with the rank's own momentum keys plus the queue only.)

:class:`CTPPlugin` holds the mechanism; :class:`CTP` is contrastive continual
training with it.
"""

from __future__ import annotations

from typing import Annotated, Dict, List, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from torch import Tensor, nn

from avalanche_mm import distributed as _dist
from avalanche_mm.registry import Range

from .finetune import _check_number
from .mod_x import (
    ContrastiveFineTune,
    find_retrieval_head,
    frozen_copy,
    last_pair_features,
    pair_benchmark_problems,
    pair_features,
)

# ---------------------------------------------------------------------------
# mechanisms as functions / small classes
# ---------------------------------------------------------------------------


@torch.no_grad()
def compatible_momentum_update(momentum_model: nn.Module, model: nn.Module, previous: Optional[nn.Module], m: float) -> None:
    """``theta_m <- m theta_m + (1-m)/2 theta + (1-m)/2 theta_prev`` in place.

    Without ``previous`` (the first phase): ``theta_m <- m theta_m + (1-m) theta``.

    :param momentum_model: the momentum model (updated in place).
    :param model: the current model.
    :param previous: the frozen previous-phase model, or None.
    :param m: the momentum in ``[0, 1]``.
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {m!r}.")
    cur = list(model.parameters())
    mom = list(momentum_model.parameters())
    prev = list(previous.parameters()) if previous is not None else None
    if len(cur) != len(mom) or (prev is not None and len(prev) != len(cur)):
        raise ValueError("compatible_momentum_update: the models do not have the same parameters.")
    for i, (p, pm) in enumerate(zip(cur, mom)):
        if prev is None:
            pm.data.mul_(m).add_(p.data, alpha=1.0 - m)
        else:
            pm.data.mul_(m).add_(p.data, alpha=(1.0 - m) / 2).add_(prev[i].data, alpha=(1.0 - m) / 2)


class KeyQueue:
    """A FIFO ring buffer of the last ``size`` keys (rows of dimension ``dim``).

    :param size: capacity ``N`` (0 disables the queue).
    :param dim: key dimension.
    :param init: ``"random"`` (random unit vectors, counted as full, as CTP's code) or
        ``"empty"`` (only enqueued keys are returned).
    :param seed: seed of the random initial keys.
    """

    def __init__(self, size: int, dim: int, *, init: str = "random", seed: int = 0):
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"queue size must be an int >= 0, got {size!r}.")
        if init not in ("random", "empty"):
            raise ValueError(f"queue init must be 'random' or 'empty', got {init!r}.")
        self.size, self.dim = size, int(dim)
        g = torch.Generator().manual_seed(int(seed))
        self.keys = F.normalize(torch.randn(size, self.dim, generator=g), dim=1) if init == "random" else torch.zeros(size, self.dim)
        self.ptr = 0
        self.filled = size if init == "random" else 0

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Append ``keys`` ``[B, dim]``, overwriting the oldest (wraps around)."""
        if self.size == 0:
            return
        keys = keys.detach().to(self.keys.device, self.keys.dtype)
        if keys.shape[0] > self.size:  # only the newest fit
            keys = keys[-self.size:]
        b = keys.shape[0]
        idx = (self.ptr + torch.arange(b)) % self.size
        self.keys[idx] = keys
        self.ptr = int((self.ptr + b) % self.size)
        self.filled = min(self.size, self.filled + b)

    def get(self) -> Tensor:
        """The keys held (``[filled, dim]``), oldest first."""
        if self.filled < self.size:
            return self.keys[: self.filled].clone()
        return torch.cat([self.keys[self.ptr:], self.keys[: self.ptr]]).clone()

    def state_dict(self) -> Dict:
        return {"keys": self.keys.clone(), "ptr": self.ptr, "filled": self.filled}

    def load_state_dict(self, state: Dict) -> None:
        self.keys = state["keys"].clone()
        self.ptr, self.filled = int(state["ptr"]), int(state["filled"])
        self.size, self.dim = self.keys.shape[0], self.keys.shape[1]


def momentum_contrast_loss(image: Tensor, text: Tensor, image_keys: Tensor, text_keys: Tensor,
                           image_queue: Tensor, text_queue: Tensor, tau: float, *,
                           positives: Optional[Tensor] = None) -> Tensor:
    """Contrast current features with the momentum keys of the batch plus the queue.

    ``0.5 [CE(I [T_m; Q_t]^T / tau, diag) + CE(T [I_m; Q_i]^T / tau, diag)]``.

    :param positives: the row of each feature's own key when the keys are those of the
        global batch (under ``torchrun``); default the diagonal.
    """
    txt_all = torch.cat([text_keys, text_queue.to(text_keys)], dim=0)
    img_all = torch.cat([image_keys, image_queue.to(image_keys)], dim=0)
    labels = torch.arange(image.shape[0], device=image.device) if positives is None else positives.to(image.device)
    return 0.5 * (F.cross_entropy(image @ txt_all.t() / tau, labels) + F.cross_entropy(text @ img_all.t() / tau, labels))


def _masked_self(sim: Tensor, own: Optional[Tensor] = None) -> Tensor:
    if own is None:
        eye = torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
    else:  # rows of this rank against the columns of the global batch
        eye = torch.zeros_like(sim, dtype=torch.bool)
        eye[torch.arange(sim.shape[0], device=sim.device), own.to(sim.device)] = True
    return sim.masked_fill(eye, -1000.0)


def topology_terms(image: Tensor, text: Tensor, image_prev: Tensor, text_prev: Tensor, tau: float, *,
                   columns: Optional[Dict[str, Tensor]] = None, own: Optional[Tensor] = None) -> Dict[str, Tensor]:
    """The four topology-preservation KL terms (``batchmean``) on normalised features.

    ``KL(softmax(S_prev / tau) || softmax(S_cur / tau))`` for ``S`` = image-text,
    text-image, image-image and text-text similarities (self-similarity masked with
    ``-1000`` before the temperature, as the code does).

    :param columns: under ``torchrun``: the global batch's features as the columns,
        ``{"image", "text", "image_prev", "text_prev"}`` (the current ones gathered with
        their gradient); the rows stay this rank's. Default: the batch itself.
    :param own: with ``columns``: the column of each row's own sample.
    :return: ``{"i2t", "t2i", "i2i", "t2t"}``.
    """
    c = columns or {"image": image, "text": text, "image_prev": image_prev, "text_prev": text_prev}
    own = own if columns is not None else None
    mats = {
        "i2t": (image @ c["text"].t(), image_prev @ c["text_prev"].t()),
        "t2i": (text @ c["image"].t(), text_prev @ c["image_prev"].t()),
        "i2i": (_masked_self(image @ c["image"].t(), own), _masked_self(image_prev @ c["image_prev"].t(), own)),
        "t2t": (_masked_self(text @ c["text"].t(), own), _masked_self(text_prev @ c["text_prev"].t(), own)),
    }
    out = {}
    for k, (cur, prev) in mats.items():
        out[k] = F.kl_div(F.log_softmax(cur / tau, dim=1), F.softmax(prev.detach() / tau, dim=1), reduction="batchmean")
    return out


def topology_loss(image: Tensor, text: Tensor, image_prev: Tensor, text_prev: Tensor, tau: float, *,
                  columns: Optional[Dict[str, Tensor]] = None, own: Optional[Tensor] = None) -> Tensor:
    """``0.5 (KL_i2t + KL_t2i) + 0.5 (KL_i2i + KL_t2t)`` (see :func:`topology_terms`)."""
    t = topology_terms(image, text, image_prev, text_prev, tau, columns=columns, own=own)
    return 0.5 * (t["i2t"] + t["t2i"]) + 0.5 * (t["i2i"] + t["t2t"])


# ---------------------------------------------------------------------------
# the plugin and the strategy
# ---------------------------------------------------------------------------


class CTPPlugin(SupervisedPlugin):
    """Compatible momentum contrast with a key queue, and topology preservation.

    :param momentum: ``m`` of the compatible update in phases after the first (0.9).
    :param init_momentum: ``m`` of the first phase's update from the current model only (0.995).
    :param queue_size: keys kept in the queue (1024 in the code).
    :param temperature: ``tau`` of the momentum contrast and the topology terms (0.07).
    :param momentum_weight: weight of the momentum contrast.
    :param topology_weight: weight of the topology preservation.
    :param queue_init: ``"random"`` (code) or ``"empty"``.
    """

    def __init__(
        self,
        *,
        momentum: float = 0.9,
        init_momentum: float = 0.995,
        queue_size: int = 1024,
        temperature: float = 0.07,
        momentum_weight: float = 1.0,
        topology_weight: float = 1.0,
        queue_init: str = "random",
    ):
        super().__init__()
        for name, v in (("momentum", momentum), ("init_momentum", init_momentum)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"CTPPlugin: {name} must be a number in [0, 1], got {v!r}.")
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 0:
            raise ValueError(f"CTPPlugin: queue_size must be an int >= 0, got {queue_size!r}.")
        _check_number("temperature", temperature)
        if temperature <= 0:
            raise ValueError(f"CTPPlugin: temperature must be > 0, got {temperature}.")
        _check_number("momentum_weight", momentum_weight)
        _check_number("topology_weight", topology_weight)
        if queue_init not in ("random", "empty"):
            raise ValueError(f"CTPPlugin: queue_init must be 'random' or 'empty', got {queue_init!r}.")
        self.momentum = float(momentum)
        self.init_momentum = float(init_momentum)
        self.queue_size = int(queue_size)
        self.temperature = float(temperature)
        self.momentum_weight = float(momentum_weight)
        self.topology_weight = float(topology_weight)
        self.queue_init = queue_init
        self.image_queue: Optional[KeyQueue] = None
        self.text_queue: Optional[KeyQueue] = None
        self.previous: Optional[nn.Module] = None
        self.momentum_model: Optional[nn.Module] = None
        self.phases_seen = 0
        self.last: Dict[str, float] = {}

    # -- checkpointing: queues and phase count (the models are re-taken at each phase start)
    def state_dict(self):
        return {
            "image_queue": None if self.image_queue is None else self.image_queue.state_dict(),
            "text_queue": None if self.text_queue is None else self.text_queue.state_dict(),
            "phases_seen": self.phases_seen,
            "last": dict(self.last),
        }

    def load_state_dict(self, state):
        self.phases_seen = int(state["phases_seen"])
        self.last = dict(state.get("last", {}))
        for name in ("image_queue", "text_queue"):
            if state[name] is None:
                setattr(self, name, None)
            else:
                q = KeyQueue(0, 1, init="empty")
                q.load_state_dict(state[name])
                setattr(self, name, q)

    def _ensure_queues(self, dim: int) -> None:
        if self.image_queue is None:
            self.image_queue = KeyQueue(self.queue_size, dim, init=self.queue_init, seed=1)
            self.text_queue = KeyQueue(self.queue_size, dim, init=self.queue_init, seed=2)

    def before_training_exp(self, strategy, **kwargs):
        find_retrieval_head(strategy.model)
        self.previous = frozen_copy(strategy.model) if self.phases_seen > 0 else None
        self.momentum_model = frozen_copy(strategy.model)

    def before_backward(self, strategy, **kwargs):
        if self.momentum_model is None:
            return
        img, txt = last_pair_features(strategy.model)
        self._ensure_queues(img.shape[1])
        tau = self.temperature
        m = self.momentum if self.previous is not None else self.init_momentum
        compatible_momentum_update(self.momentum_model, strategy.model, self.previous, m)
        with torch.no_grad():
            img_m, txt_m = pair_features(self.momentum_model, strategy.mb_x)
        # under torchrun the momentum keys of the *global* batch (in the 1-process order): they
        # are the in-batch negatives of every rank and all of them enter the queue, which stays
        # identical on every rank (MoCo's concat_all_gather); not distributed: the batch itself
        img_m, own = _dist.gather_rows(img_m, order="sampler")
        txt_m, _ = _dist.gather_rows(txt_m, order="sampler")
        extra = img.new_zeros(())
        parts: Dict[str, float] = {}
        if self.momentum_weight:
            md = momentum_contrast_loss(img, txt, img_m, txt_m, self.image_queue.get(), self.text_queue.get(), tau,
                                        positives=own)
            extra = extra + self.momentum_weight * md
            parts["momentum_contrast"] = float(md.detach())
        self.image_queue.enqueue(img_m)
        self.text_queue.enqueue(txt_m)
        if self.previous is not None and self.topology_weight:
            with torch.no_grad():
                img_p, txt_p = pair_features(self.previous, strategy.mb_x)
            columns = None
            if _dist.is_distributed():  # the in-batch similarity matrices of the global batch
                columns = {
                    "image": _dist.gather_rows_with_grad(img, order="sampler")[0],
                    "text": _dist.gather_rows_with_grad(txt, order="sampler")[0],
                    "image_prev": _dist.gather_rows(img_p, order="sampler")[0],
                    "text_prev": _dist.gather_rows(txt_p, order="sampler")[0],
                }
            topo = topology_loss(img, txt, img_p, txt_p, tau, columns=columns, own=own)
            extra = extra + self.topology_weight * topo
            parts["topology"] = float(topo.detach())
        self.last = parts
        strategy.loss = strategy.loss + extra

    def after_training_exp(self, strategy, **kwargs):
        self.phases_seen += 1
        self.previous = None
        self.momentum_model = None


class CTP(ContrastiveFineTune):
    """CTP: contrastive continual CLIP training with compatible momentum contrast and
    topology preservation.

    :param momentum: momentum ``m`` of the compatible update (phases after the first).
    :param init_momentum: momentum of the first phase (update from the current model only).
    :param queue_size: number of momentum keys kept in each queue (1024 in the code).
    :param temperature: temperature of the momentum contrast and the topology KL terms.
    :param momentum_weight: weight of the momentum contrast.
    :param topology_weight: weight of the topology preservation.
    :param queue_init: ``"random"``: the queue starts as random unit keys (code);
        ``"empty"``: only real keys are used.
    :param clamp_logit_scale: clamp the logit scale to ``[0, ln 100]`` after each step.
    :param base_kwargs: the arguments of :class:`~avalanche_mm.strategies.FineTune`.
    """

    def __init__(
        self,
        *,
        momentum: float = 0.9,  # range checked by the method's check (message names the method)
        init_momentum: float = 0.995,
        queue_size: Annotated[int, Range(ge=0)] = 1024,
        temperature: Annotated[float, Range(gt=0.0)] = 0.07,
        momentum_weight: Annotated[float, Range(ge=0.0)] = 1.0,
        topology_weight: Annotated[float, Range(ge=0.0)] = 1.0,
        queue_init: Literal["random", "empty"] = "random",
        clamp_logit_scale: bool = True,
        plugins: Optional[Sequence] = None,
        **base_kwargs,
    ):
        self.ctp_plugin = CTPPlugin(
            momentum=momentum, init_momentum=init_momentum, queue_size=queue_size,
            temperature=temperature, momentum_weight=momentum_weight,
            topology_weight=topology_weight, queue_init=queue_init,
        )
        super().__init__(
            clamp_logit_scale=clamp_logit_scale, plugins=list(plugins or []) + [self.ctp_plugin], **base_kwargs
        )


# ---------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------


def _phase_sizes(bundle) -> List[int]:
    try:
        return [len(e.dataset) for e in bundle.scenario.train_stream]
    except Exception:  # noqa: BLE001 - a lazily built bundle: nothing to check here
        return []


def _check(ctx, params: Dict) -> List[str]:
    out = pair_benchmark_problems(ctx, "ctp")
    for name in ("momentum", "init_momentum"):
        v = params.get(name)
        if v is not None and not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
            out.append(f"{ctx.key}.{name}: ctp found a momentum of {v!r}, needs one in [0, 1] "
                       "(theta_m <- m theta_m + (1-m)/2 (theta + theta_prev); 0.9 in the paper)")
    q = params.get("queue_size", 1024)
    if out or ctx.bundle is None or not isinstance(q, int):
        return out
    sizes = _phase_sizes(ctx.bundle)
    if sizes and q > min(sizes):
        out.append(
            f"{ctx.key}.queue_size: ctp found a queue of {q} keys, but the smallest training phase "
            f"has {min(sizes)} pairs (phases: {sizes}); a queue larger than a phase keeps stale keys "
            f"of earlier phases and models; it needs queue_size <= {min(sizes)}"
        )
    return out


def _register():
    from .registry import register_method

    @register_method(
        "ctp",
        summary="CTP: compatible momentum contrast with a key queue + topology preservation (pairs)",
        params_from=CTP,
        model_kinds=("clip",),
        family="regularization",
        reference="Zhu et al., ICCV 2023",
        check=_check,
        distributed=True,
    )
    def _build(ctx, params: Dict):
        return CTP(**ctx.common_kwargs(ContrastiveFineTune), **params)


_register()

__all__ = [
    "compatible_momentum_update",
    "KeyQueue",
    "momentum_contrast_loss",
    "topology_terms",
    "topology_loss",
    "CTPPlugin",
    "CTP",
]
