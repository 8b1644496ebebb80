"""ZSCL: Zero-Shot Continual Learning (Zheng et al., "Preventing Zero-Shot Transfer
Degradation in Continual Learning of Vision-Language Models", ICCV 2023).

Both CLIP towers are fine-tuned on each task with three additions:

1. **Reference-set distillation.** A batch of reference images ``x_r`` (ImageNet in
   the paper) and a fixed bank of reference sentences ``C`` (Conceptual
   Captions) give ``S = tau * f(x_r) g(C)^T``. With the frozen initial
   (zero-shot) model as teacher, ``L_img = KD(S_t, S_s)`` over image rows and
   ``L_txt = KD(S_t^T, S_s^T)`` over sentence rows, with temperature ``T``
   (``KD(t, s) = CE(softmax(t/T), log_softmax(s/T)) * T^2``). In the released
   code the student's sentence features are the teacher's (so only the image
   tower gets distillation gradient) - ``text_features="teacher"``, the
   default here; ``"student"`` encodes them with the student, as the paper's
   formula reads.
2. **Parameter-space L2** to the weights at the start of the current task:
   ``l2_weight * sum ||theta - theta_start||^2``.
3. **Weight ensemble (WE).** The running average
   ``theta_bar <- (n * theta_bar + theta) / (n + 1)`` of weight snapshots is the
   model kept after the task. ``we_mode="code"`` (default) is the released code
   (``merge_we`` in ``mtil/src/models/helpers.py``): the average starts from the
   task-start weights (``we_model = deepcopy(model)``, ``n = 0``) and merges after
   iteration 0 and after every ``we_every``-th iteration; its loop runs
   ``iterations + 1`` steps, the last one at learning rate 0, so its final merge
   (iteration ``iterations``) takes the trained weights: here the end-of-task
   weights are merged when ``iterations`` is a multiple of ``we_every``. With
   1000 iterations and ``we_every=100``: 12 snapshots (task start, after steps
   1, 101, ..., 901, and the final weights). ``we_mode="periodic"`` averages
   the snapshots after steps ``we_every, 2 we_every, ...`` only (10 snapshots).

The teacher's work is done once: its features of the reference sentences once
per task (the teacher is frozen), and its reference-image features once for
the whole run when the reference set is a tensor of preprocessed images
(``precompute_teacher_images``, on by default for a tensor: the released code's
reference images go through eval preprocessing, so the frozen teacher's features
are fixed; encoded in fixed chunks, so a resumed run recomputes the same bits).
For a dataset reference set (whose transforms may be random) the teacher
encodes each reference batch, as the released code does on every iteration;
``cache_teacher_images`` keeps each image's features the first time it is drawn
(an index-addressed cache, for deterministic datasets): float-equal, but a
feature computed in a different batch can differ in the last bits, so a resumed
run then differs from an uninterrupted one in the last digits.

The student's work is fused (``fused_forward``): the reference images are
encoded in the same image-tower pass as the training batch and, with
``text_features="student"``, the reference sentences in the same text-tower
pass as the class prompts; the L2 gradient ``2 w (theta - theta_start)`` is
added after the backward pass with multi-tensor ops (``fast_l2``). Losses and
gradients equal the separate passes to float precision.

An embedding table's rows that no forward pass has looked up since the task start
keep their start values when the optimizer cannot move a row without gradient
(``torch.optim`` Adam, AdamW or SGD without weight decay): their L2 value and
gradient are exactly zero, so ``sparse_embedding_l2`` computes the term of an
``nn.Embedding`` weight over the looked-up rows only (CLIP's token embedding is 93%
of the demo model's parameters and 17% of ViT-B/16's; a prompt batch touches a few
hundred of its 49,408 rows). The dense check ``theta == theta_start`` on the other
rows runs at iterations 1, 2 and every 100th; a row changed by anything else (a
weight shared with another module, a direct use of the weight, another plugin)
sends that table back to the dense computation with a warning.

:class:`ZSCLPlugin` holds the three mechanisms (each can be switched off
with a zero weight / period); :class:`ZSCL` is continual fine-tuning with it.
"""

from __future__ import annotations

import warnings
import zlib
from typing import Annotated, Any, Dict, Iterator, List, Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from avalanche_mm.registry import Range

from .finetune import (
    FineTune,
    _check_number,
    _check_positive_int,
    distillation_loss,
    find_backbone,
    frozen_copy,
    images_of,
    logit_scale_of,
    trainable_state,
)

WE_MODES = ("code", "periodic")


def _images_of(batch: Any, key: str) -> Tensor:
    """The image tensor of a reference batch: ``(x, y, ...)``, ``x`` mapping or tensor."""
    return images_of(batch, key, where="ZSCLPlugin")


class _Indexed(Dataset):
    """``dataset[i] -> (dataset[i], i)`` so that a loader's batches carry their indices."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.collate = getattr(dataset, "collate_fn", None)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i], i

    def collate_fn(self, items):
        from torch.utils.data import default_collate

        samples = [s for s, _ in items]
        batch = self.collate(samples) if self.collate is not None else default_collate(samples)
        return batch, torch.as_tensor([i for _, i in items], dtype=torch.long)


def _stable_seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode("utf-8")) & 0x7FFFFFFF

#: optimizers whose update of a parameter row without gradient and without state is zero
#: when the row's group has no weight decay (Adam/AdamW: ``m = 0``; SGD: no gradient, no
#: momentum); exact types, since a subclass may change the step
_ROW_EXACT_OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)


class _LookedUpRows:
    """The rows of an ``nn.Embedding`` weight looked up with gradient since the task start
    (plus those already moved when tracking began), recorded by a forward hook."""

    def __init__(self, module: nn.Embedding, mask: Tensor):
        self.param = module.weight
        self.mask = mask
        self._rows: Optional[Tensor] = None
        self._handle = module.register_forward_hook(self._seen)

    def _seen(self, module, args, output):
        if torch.is_grad_enabled() and args and isinstance(args[0], Tensor):
            self.mask[args[0].reshape(-1).to(self.mask.device)] = True
            self._rows = None

    def rows(self) -> Tensor:
        if self._rows is None:
            self._rows = self.mask.nonzero().flatten()
        return self._rows

    def remove(self) -> None:
        self._handle.remove()


def _nonzero_rows(x: Tensor) -> Tensor:
    """``[rows]`` bool: the rows of ``x`` with an element that is not 0 (NaN counts)."""
    if not bool(torch.count_nonzero(x)):  # the common case (the task start), one flat pass
        return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    return x.abs().amax(dim=1).ne(0)


def _row_sparse_tables(model: nn.Module, optimizer, params, starts) -> Dict[int, _LookedUpRows]:
    """``{index in params: tracker}`` for the embedding weights whose L2 term can be computed
    over looked-up rows exactly: the weight of exactly one ``nn.Embedding`` (no ``max_norm``,
    dense gradient), optimised by Adam, AdamW or SGD with weight decay 0, in a single
    process (another rank's look-ups would reach this rank's rows through the all-reduce)."""
    if optimizer is None or type(optimizer) not in _ROW_EXACT_OPTIMIZERS:
        return {}
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        return {}
    holders: Dict[int, list] = {}
    for module in model.modules():
        for name, q in module.named_parameters(recurse=False):
            holders.setdefault(id(q), []).append((module, name))
    groups = {id(q): g for g in optimizer.param_groups for q in g["params"]}
    out = {}
    for i, (p, s) in enumerate(zip(params, starts)):
        owners = holders.get(id(p), [])
        if len(owners) != 1 or p.dim() != 2:
            continue
        module, name = owners[0]
        if not isinstance(module, nn.Embedding) or name != "weight" or module.max_norm is not None or module.sparse:
            continue
        group = groups.get(id(p))
        if group is None or float(group.get("weight_decay", 0.0) or 0.0) != 0.0:
            continue
        with torch.no_grad():
            mask = _nonzero_rows(p.detach() - s)  # rows already moved (a tracker built mid-task)
            state = optimizer.state.get(p) or {}
            for key in ("exp_avg", "momentum_buffer"):  # state carried over from an earlier task
                buf = state.get(key)
                if isinstance(buf, Tensor) and buf.shape == p.shape:
                    mask |= _nonzero_rows(buf)
        out[i] = _LookedUpRows(module, mask)
    return out


class ZSCLPlugin(SupervisedPlugin):
    """The three mechanisms of ZSCL (see the module docstring).

    :param reference_images: the reference images: a tensor ``[N, 3, H, W]``
        already preprocessed for the backbone, or a dataset of ``(x, ...)``
        samples (``x`` a tensor or a modality dict holding ``image_key``);
        a dataset's ``collate_fn`` is used when it has one.
    :param reference_texts: the reference sentences: a list of strings
        (tokenised with the backbone's ``tokenize``) or token ids ``[M, L]``.
    :param image_weight: weight of ``L_img`` (0 disables it).
    :param text_weight: weight of ``L_txt`` (0 disables it).
    :param temperature: distillation temperature ``T``.
    :param l2_weight: weight of the L2 term to the task's starting weights (0 disables it).
    :param we_every: weight-ensemble period in iterations (0 disables WE).
    :param we_mode: ``"code"`` (released code: task start, iteration 0, every
        ``we_every``, end) or ``"periodic"`` (snapshots ``we_every, 2 we_every, ...``).
    :param cache_teacher_images: keep the teacher's features of each reference
        image after its first use (the teacher is frozen).
    :param precompute_teacher_images: encode the whole reference set (a tensor)
        with the teacher once, before the first task. None (default): on for a
        tensor reference set (images already preprocessed, so the frozen teacher's
        features are fixed), off for a dataset (its transforms may be random).
    :param fused_forward: encode the reference images with the training images in
        one student forward, and (``text_features="student"``) the reference sentences
        with the class prompts in one text forward (the same features and gradients to
        float precision; one pass per tower instead of two).
    :param fast_l2: compute the L2 term without autograd and add its gradient
        ``2 w (theta - theta_start)`` after the backward pass (same value and gradient).
    :param sparse_embedding_l2: with ``fast_l2``, compute the term of ``nn.Embedding``
        weights over the rows looked up since the task start only, where that is exact
        (see the module docstring; checked against the dense computation).
    :param ref_batch_size: reference images per iteration.
    :param ref_text_batch_size: reference sentences per iteration (None: all).
    :param text_features: ``"teacher"`` (released code) or ``"student"`` (paper formula).
    :param teacher: the teacher (a backbone or a model holding one); default:
        a frozen copy of the model's backbone taken before the first experience.
    :param image_key: modality name of the images in reference samples.
    :param seed: seed of the reference sampling (re-derived per experience).
    """

    def __init__(
        self,
        *,
        reference_images: Union[Tensor, Dataset],
        reference_texts: Union[Sequence[str], Tensor],
        image_weight: float = 1.0,
        text_weight: float = 1.0,
        temperature: float = 2.0,
        l2_weight: float = 1.0,
        we_every: int = 100,
        we_mode: str = "code",
        cache_teacher_images: bool = False,
        precompute_teacher_images: Optional[bool] = None,
        fused_forward: bool = True,
        fast_l2: bool = True,
        sparse_embedding_l2: bool = True,
        ref_batch_size: int = 64,
        ref_text_batch_size: Optional[int] = None,
        text_features: str = "teacher",
        teacher: Optional[nn.Module] = None,
        image_key: str = "image",
        seed: int = 0,
    ):
        super().__init__()
        if we_mode not in WE_MODES:
            raise ValueError(f"we_mode must be one of {WE_MODES}, got {we_mode!r}.")
        for name, value in (("image_weight", image_weight), ("text_weight", text_weight),
                            ("l2_weight", l2_weight), ("temperature", temperature)):
            _check_number(name, value)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        _check_positive_int("we_every", we_every, allow_zero=True)
        _check_positive_int("ref_batch_size", ref_batch_size)
        _check_positive_int("ref_text_batch_size", ref_text_batch_size, allow_none=True)
        if text_features not in ("teacher", "student"):
            raise ValueError(f"text_features must be 'teacher' or 'student', got {text_features!r}.")
        if reference_images is None or len(reference_images) == 0:
            raise ValueError("reference_images is empty; ZSCL needs a reference set of images.")
        if isinstance(reference_texts, str):
            raise TypeError("reference_texts must be a list of sentences, got a single string.")
        if reference_texts is None or len(reference_texts) == 0:
            raise ValueError("reference_texts is empty; ZSCL needs a bank of reference sentences.")
        if isinstance(reference_images, Tensor) and reference_images.dim() != 4:
            raise ValueError(
                f"reference_images as a tensor must be [N, 3, H, W], got shape {tuple(reference_images.shape)}."
            )
        self.reference_images = reference_images
        self.reference_texts = reference_texts
        self.image_weight = float(image_weight)
        self.text_weight = float(text_weight)
        self.temperature = float(temperature)
        self.l2_weight = float(l2_weight)
        self.we_every = int(we_every)
        self.we_mode = we_mode
        if precompute_teacher_images is None:
            precompute_teacher_images = isinstance(reference_images, Tensor)
        self.cache_teacher_images = bool(cache_teacher_images) or bool(precompute_teacher_images)
        self.precompute_teacher_images = bool(precompute_teacher_images)
        self.fused_forward = bool(fused_forward)
        self.fast_l2 = bool(fast_l2)
        self.sparse_embedding_l2 = bool(sparse_embedding_l2)
        self._l2_rows: Dict[int, _LookedUpRows] = {}
        self._pending = None
        self._s_ref: Optional[Tensor] = None
        self._s_txt: Optional[Tensor] = None
        self._fused_backbone = None
        self._l2_diffs = None
        self._l2_cache = None
        self.ref_batch_size = int(ref_batch_size)
        self.ref_text_batch_size = ref_text_batch_size
        self.text_features = text_features
        self.image_key = image_key
        self.seed = int(seed)
        self.teacher: Optional[nn.Module] = find_backbone(teacher) if teacher is not None else None
        if self.teacher is not None:
            self._freeze_teacher()
        # per-experience state
        self.start_weights: Dict[str, Tensor] = {}
        self.we_weights: Dict[str, Tensor] = {}
        self.we_count = 0
        self.iteration = 0
        self.last_losses: Dict[str, float] = {}
        self._ref_iter: Optional[Iterator] = None
        self._generator: Optional[torch.Generator] = None
        self._tokens: Optional[Tensor] = None
        self._teacher_text: Optional[Tensor] = None
        self._t_img: Optional[Tensor] = None  # [N, D] teacher features of the reference images
        self._t_img_known: Optional[Tensor] = None  # [N] bool
        self._t_img_all = False  # every reference image's teacher features are in _t_img
        self.num_teacher_image_encodings = 0
        self.total_iterations: Optional[int] = None

    # -- setup -----------------------------------------------------------------
    def _freeze_teacher(self) -> None:
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def before_training_exp(self, strategy, **kwargs):
        if self.teacher is None:
            self.teacher = frozen_copy(find_backbone(strategy.model))
        self.teacher.to(strategy.device)
        if self.precompute_teacher_images and isinstance(self.reference_images, Tensor):
            self.encode_all_reference_images(strategy.device)
        exp_id = int(strategy.experience.current_experience)
        self._generator = torch.Generator().manual_seed(_stable_seed(self.seed, exp_id))
        self._ref_iter = None
        self.start_weights = trainable_state(strategy.model) if self.l2_weight > 0 else {}
        self.we_weights = {}
        self.we_count = 0
        if self.we_every and self.we_mode == "code":
            # the released code's we_model = deepcopy(model), we_n = 0: the task start is a snapshot
            self.we_weights = trainable_state(strategy.model)
            self.we_count = 1
        self.iteration = 0
        sched = getattr(strategy, "schedule_plugin", None)
        self.total_iterations = getattr(sched, "iterations", None)

    def _texts(self, device) -> Tensor:
        if self._tokens is None:
            if isinstance(self.reference_texts, Tensor):
                self._tokens = self.reference_texts.long()
            else:
                self._tokens = find_backbone(self.teacher).tokenize(list(self.reference_texts))
        return self._tokens.to(device)

    def _next_images(self, device):
        """``(images, indices)`` of the next reference batch."""
        ref = self.reference_images
        if isinstance(ref, Tensor):
            idx = torch.randint(len(ref), (min(self.ref_batch_size, len(ref)),), generator=self._generator)
            return ref[idx].to(device), idx
        if self._ref_iter is None:
            self._ref_iter = self._cycle(ref)
        batch, idx = next(self._ref_iter)
        return _images_of(batch, self.image_key).to(device), idx

    def _cycle(self, dataset) -> Iterator:
        bs = min(self.ref_batch_size, len(dataset))
        indexed = _Indexed(dataset)
        while True:
            loader = DataLoader(
                indexed,
                batch_size=bs,
                shuffle=True,
                drop_last=True,
                generator=self._generator,
                collate_fn=indexed.collate_fn,
            )
            yield from loader

    def encode_all_reference_images(self, device, batch_size: int = 256) -> None:
        """Fill the teacher-feature cache for every reference image not encoded yet."""
        n = len(self.reference_images)
        known = self._t_img_known
        todo = torch.arange(n) if known is None else (~known).nonzero().flatten()
        with torch.no_grad():
            for s in range(0, len(todo), batch_size):
                idx = todo[s : s + batch_size]
                self.teacher_image_features(self.reference_images[idx].to(device), idx)

    def teacher_image_features(self, images: Tensor, indices: Tensor) -> Tensor:
        """The teacher's features of reference images (cached by index when enabled)."""
        if not self.cache_teacher_images:
            self.num_teacher_image_encodings += len(images)
            return self.teacher.encode_image(images)
        if self._t_img_all:  # all precomputed: a plain lookup
            return self._t_img[indices.to(self._t_img.device)]
        n = len(self.reference_images)
        if self._t_img_known is None:
            self._t_img_known = torch.zeros(n, dtype=torch.bool)
        unique = torch.unique(indices)
        todo = unique[~self._t_img_known[unique]]
        if len(todo):
            pos = {int(i): k for k, i in enumerate(indices.tolist())}
            rows = torch.as_tensor([pos[int(i)] for i in todo], device=images.device)
            feats = self.teacher.encode_image(images.index_select(0, rows))
            self.num_teacher_image_encodings += len(todo)
            if self._t_img is None:
                self._t_img = feats.new_zeros(n, feats.shape[1])
            self._t_img[todo.to(self._t_img.device)] = feats.to(self._t_img.dtype)
            self._t_img_known[todo] = True
            self._t_img_all = bool(self._t_img_known.all())
        return self._t_img[indices.to(self._t_img.device)]

    # -- the losses --------------------------------------------------------------
    def _draw(self, device):
        """``(images, indices, sel)``: the next reference batch and the sentence subset (None: all)."""
        images, indices = self._next_images(device)
        sel = None
        n_txt = len(self.reference_texts)
        if self.ref_text_batch_size is not None and self.ref_text_batch_size < n_txt:
            sel = torch.randperm(n_txt, generator=self._generator)[: self.ref_text_batch_size].to(device)
        return images, indices, sel

    def distillation(self, strategy) -> Dict[str, Tensor]:
        """``{"image": L_img, "text": L_txt}`` on one reference batch."""
        device = strategy.device
        student = find_backbone(strategy.model)
        teacher = self.teacher
        if self._pending is not None:
            images, indices, sel = self._pending
        else:
            images, indices, sel = self._draw(device)
        s_img_fused, s_txt_fused = self._s_ref, self._s_txt
        self._pending = self._s_ref = self._s_txt = None
        tokens = self._texts(device)
        with torch.no_grad():
            if self._teacher_text is None:
                self._teacher_text = teacher.encode_text(tokens)
            t_img = self.teacher_image_features(images, indices)
            t_scale = logit_scale_of(teacher)
        t_txt = self._teacher_text if sel is None else self._teacher_text[sel]
        s_img = s_img_fused if s_img_fused is not None else student.encode_image(images)
        if self.text_features == "student":
            s_txt = s_txt_fused if s_txt_fused is not None else student.encode_text(tokens if sel is None else tokens[sel])
        else:
            s_txt = t_txt
        s_scale = logit_scale_of(student)
        s_logits = s_scale * s_img @ s_txt.t()
        t_logits = t_scale * t_img @ t_txt.t()
        return {
            "image": distillation_loss(t_logits, s_logits, self.temperature),
            "text": distillation_loss(t_logits.t(), s_logits.t(), self.temperature),
        }

    def l2_penalty(self, model: nn.Module) -> Tensor:
        """``sum ||theta - theta_start||^2`` over the trainable parameters."""
        terms = [
            (p - self.start_weights[n].to(p.device)).pow(2).sum()
            for n, p in model.named_parameters()
            if n in self.start_weights
        ]
        if not terms:
            return torch.zeros((), device=next(model.parameters()).device)
        return torch.stack(terms).sum()

    # -- one student forward per tower for the training and the reference batches ---------
    def before_forward(self, strategy, **kwargs):
        """Wrap the student's ``encode_image`` (and, for ``text_features="student"``,
        ``encode_text``) for their next call: the reference batch is concatenated to the
        model's batch, encoded in one pass, and split. CLIP towers have no batch-dependent
        layer (no batch norm; attention is within a sample, text pooling per row), so every
        row equals a separate pass to float precision, gradients included."""
        if self.l2_weight > 0 and self.fast_l2 and self.sparse_embedding_l2:
            # before the model's forward: its embedding look-ups are the rows to track
            self._l2_operands(strategy.model, getattr(strategy, "optimizer", None))
        if not self.fused_forward or not (self.image_weight > 0 or self.text_weight > 0):
            return
        self._pending = self._draw(strategy.device)
        self._s_ref = self._s_txt = None
        backbone = find_backbone(strategy.model)
        images_ref, _, sel = self._pending
        plugin = self
        wrapped = {}

        def fused_image(images, normalize: bool = True):
            original = wrapped.pop("encode_image")
            backbone.__dict__.pop("encode_image", None)  # one call only
            if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1:] != images_ref.shape[1:]:
                return original(images, normalize)
            n = images.shape[0]
            out = original(torch.cat([images, images_ref.to(images.device, images.dtype)]), False)
            # normalisation is per row: normalising the parts equals normalising the whole
            plugin._s_ref = F.normalize(out[n:], dim=-1)
            return F.normalize(out[:n], dim=-1) if normalize else out[:n]

        def fused_text(token_ids, normalize: bool = True):
            original = wrapped.pop("encode_text")
            backbone.__dict__.pop("encode_text", None)
            if not isinstance(token_ids, Tensor) or token_ids.dim() != 2 or token_ids.is_floating_point():
                return original(token_ids, normalize)
            ref = plugin._texts(token_ids.device)
            ref = ref if sel is None else ref[sel]
            n = token_ids.shape[0]
            both = torch.cat([backbone.fit_context(token_ids.long()), backbone.fit_context(ref)])
            out = original(both, False)
            plugin._s_txt = F.normalize(out[n:], dim=-1)
            return F.normalize(out[:n], dim=-1) if normalize else out[:n]

        wrapped["encode_image"] = backbone.encode_image
        backbone.__dict__["encode_image"] = fused_image
        if self.text_features == "student" and callable(getattr(backbone, "fit_context", None)):
            wrapped["encode_text"] = backbone.encode_text
            backbone.__dict__["encode_text"] = fused_text
        self._fused_backbone = (backbone, wrapped)

    def after_forward(self, strategy, **kwargs):
        fused = getattr(self, "_fused_backbone", None)
        if fused is not None:  # the head did not call a wrapped encoder (e.g. cached features)
            backbone, wrapped = fused
            for name in list(wrapped):
                backbone.__dict__.pop(name, None)
            self._fused_backbone = None

    # -- the penalty terms ---------------------------------------------------------------
    def _l2_operands(self, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None):
        """``(params, starts, diffs)`` of the L2 term, built once per task: the trainable
        parameters that have a start weight, their start weights on the parameters'
        devices, and one preallocated buffer each for ``theta - theta_start`` (reused at
        every step instead of allocating the parameters' size anew: measured 0.4 ms of
        3.7 per demo iteration); ``None`` for an embedding table computed over its
        looked-up rows (``sparse_embedding_l2``, given the ``optimizer``)."""
        cache = self._l2_cache
        if cache is not None and cache[0] is model and cache[1] is self.start_weights:
            return cache[2:]
        self._drop_row_trackers()
        pairs = [(p, self.start_weights[n]) for n, p in model.named_parameters() if n in self.start_weights]
        params = [p for p, _ in pairs]
        starts = [s.to(p.device) for p, s in pairs]
        if self.sparse_embedding_l2:
            self._l2_rows = _row_sparse_tables(model, optimizer, params, starts)
        diffs = [None if i in self._l2_rows else torch.empty_like(p, requires_grad=False)
                 for i, p in enumerate(params)]
        self._l2_cache = (model, self.start_weights, params, starts, diffs)
        return params, starts, diffs

    def _drop_row_trackers(self) -> None:
        for tracker in self._l2_rows.values():
            tracker.remove()
        self._l2_rows = {}

    def _check_rows(self, params, starts, diffs) -> None:
        """The dense check of ``sparse_embedding_l2``: every row outside a table's looked-up
        rows still equals its start value; a table where one does not goes back to the
        dense computation."""
        for i, tracker in list(self._l2_rows.items()):
            with torch.no_grad():
                d = params[i].detach() - starts[i]
                d.index_fill_(0, tracker.rows(), 0)
                stray = int(_nonzero_rows(d).sum())
            if stray:
                warnings.warn(
                    f"ZSCL sparse_embedding_l2: {stray} row(s) of an embedding table "
                    f"({tuple(params[i].shape)}) changed without being looked up by its module "
                    "(a weight shared with another module or used directly, or changed by another "
                    "plugin); the L2 term of this table is computed densely from now on. Pass "
                    "sparse_embedding_l2=False to always compute it densely.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                tracker.remove()
                del self._l2_rows[i]
                diffs[i] = torch.empty_like(params[i], requires_grad=False)

    def _l2_direct(self, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None) -> Tensor:
        """``sum ||theta - theta_start||^2`` without autograd; keeps ``theta - theta_start``
        for :meth:`after_backward`, which adds its gradient ``2 w (theta - theta_start)``."""
        params, starts, diffs = self._l2_operands(model, optimizer)
        if not params:
            self._l2_diffs = None
            return torch.zeros((), device=next(model.parameters()).device)
        step = self.iteration
        if self._l2_rows and step > 0 and (step <= 2 or step % 100 == 0):
            self._check_rows(params, starts, diffs)
        rows_of = self._l2_rows
        sparse: Dict[int, Any] = {}
        with torch.no_grad():
            dense = [i for i in range(len(params)) if i not in rows_of]
            for i in dense:
                torch.sub(params[i].detach(), starts[i], out=diffs[i])
            norms = list(torch._foreach_norm([diffs[i] for i in dense])) if dense else []
            for i, tracker in rows_of.items():
                rows = tracker.rows()
                d = params[i].detach().index_select(0, rows) - starts[i].index_select(0, rows)
                sparse[i] = (rows, d)
                norms.append(torch.linalg.vector_norm(d))
            value = torch.stack([n.float() for n in norms]).pow(2).sum()
        self._l2_diffs = (params, diffs, sparse)
        return value

    def before_backward(self, strategy, **kwargs):
        losses: Dict[str, Tensor] = {}
        if self.image_weight > 0 or self.text_weight > 0:
            d = self.distillation(strategy)
            if self.image_weight > 0:
                losses["image"] = self.image_weight * d["image"]
            if self.text_weight > 0:
                losses["text"] = self.text_weight * d["text"]
        self._l2_diffs = None
        if self.l2_weight > 0:
            if self.fast_l2:  # value only; gradient in after_backward
                losses["l2"] = self.l2_weight * self._l2_direct(strategy.model, getattr(strategy, "optimizer", None))
            else:
                losses["l2"] = self.l2_weight * self.l2_penalty(strategy.model)
        for value in losses.values():
            strategy.loss = strategy.loss + value
        self.last_losses = {k: float(v.detach()) for k, v in losses.items()}

    def after_backward(self, strategy, **kwargs):
        if self._l2_diffs is None:
            return
        params, diffs, sparse = self._l2_diffs
        self._l2_diffs = None
        alpha = 2.0 * self.l2_weight
        with torch.no_grad():
            dense = [(p, d) for i, (p, d) in enumerate(zip(params, diffs)) if i not in sparse]
            with_grad = [(p, d) for p, d in dense if p.grad is not None]
            if with_grad:
                torch._foreach_add_([p.grad for p, _ in with_grad], [d for _, d in with_grad], alpha=alpha)
            for p, d in dense:
                if p.grad is None:
                    p.grad = d.mul(alpha).to(p.dtype)
            for i, (rows, d) in sparse.items():
                p = params[i]
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.index_add_(0, rows, d.to(p.grad.dtype), alpha=alpha)

    # -- weight ensemble -----------------------------------------------------------
    def _merge(self, model: nn.Module) -> None:
        """``theta_bar <- (n theta_bar + theta) / (n + 1)`` (``merge_we`` of the released code)."""
        n = self.we_count  # snapshots already in the average
        avgs, params = [], []
        # an embedding table tracked by sparse_embedding_l2: its other rows equal the task
        # start in the weights and in the average, where the merge leaves them unchanged
        tracked = {id(t.param): t for t in self._l2_rows.values()}
        with torch.no_grad():
            for name, p in model.named_parameters():
                if not p.requires_grad:
                    continue
                avg = self.we_weights.get(name)
                tracker = tracked.get(id(p))
                if avg is None or n == 0:
                    self.we_weights[name] = p.detach().clone()
                elif tracker is not None:
                    rows = tracker.rows()
                    merged = avg.index_select(0, rows).lerp_(p.detach().index_select(0, rows), 1.0 / (n + 1.0))
                    avg.index_copy_(0, rows, merged)
                else:
                    avgs.append(avg)
                    params.append(p.detach())
            if avgs:  # (n avg + p) / (n + 1) = avg + (p - avg) / (n + 1): one multi-tensor pass
                torch._foreach_lerp_(avgs, params, 1.0 / (n + 1.0))
        self.we_count += 1

    def after_training_iteration(self, strategy, **kwargs):
        step = self.iteration  # 0-based index of the step just taken
        self.iteration += 1
        if not self.we_every:
            return
        if self.we_mode == "code":
            if step % self.we_every == 0:
                self._merge(strategy.model)
        elif self.iteration % self.we_every == 0:
            self._merge(strategy.model)

    def after_training_exp(self, strategy, **kwargs):
        if (self.we_every and self.we_mode == "code" and self.total_iterations
                and self.total_iterations % self.we_every == 0 and self.iteration == self.total_iterations):
            # the released loop's iteration `iterations` (lr 0) merges the trained weights
            self._merge(strategy.model)
        merged = self.we_count > (1 if self.we_mode == "code" else 0)
        if self.we_every and merged:
            with torch.no_grad():
                for name, p in strategy.model.named_parameters():
                    if name in self.we_weights:
                        p.copy_(self.we_weights[name])
        self.start_weights = {}
        self.we_weights = {}
        self._ref_iter = None
        self._l2_cache = self._l2_diffs = None
        self._drop_row_trackers()

    # -- checkpointing ---------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """What must survive between experiences: the teacher's weights."""
        return {"teacher": None if self.teacher is None else self.teacher.state_dict()}

    def load_state_dict(self, state: Dict[str, Any], *, model: Optional[nn.Module] = None) -> None:
        """Restore :meth:`state_dict`; ``model`` gives the teacher's structure when
        the plugin has no teacher yet (a copy of its backbone is made)."""
        teacher_state = state.get("teacher")
        if teacher_state is None:
            self.teacher = None
            return
        if self.teacher is None:
            if model is None:
                raise ValueError(
                    "ZSCLPlugin.load_state_dict: the plugin has no teacher module yet; pass "
                    "model= (the strategy's model) so that one can be built."
                )
            self.teacher = frozen_copy(find_backbone(model))
        self.teacher.load_state_dict(teacher_state)
        self._freeze_teacher()
        self._teacher_text = None
        self._t_img = self._t_img_known = None
        self._t_img_all = False


class ZSCL(FineTune):
    """Continual fine-tuning with ZSCL's distillation, L2 and weight ensemble.

    :param reference_images: see :class:`ZSCLPlugin`.
    :param reference_texts: see :class:`ZSCLPlugin`.
    :param image_weight: weight of the image-side distillation.
    :param text_weight: weight of the text-side (transposed) distillation.
    :param temperature: distillation temperature (2 in the paper).
    :param l2_weight: weight of the L2 term to the task's starting weights (1 in the paper).
    :param we_every: weight-ensemble period in iterations (100 in the paper).
    :param we_mode: ``"code"`` (released code: the task start and iteration 0 are
        snapshots) or ``"periodic"`` (snapshots every ``we_every`` iterations only).
    :param cache_teacher_images: cache the frozen teacher's reference-image features by index.
    :param precompute_teacher_images: encode the whole reference set with the teacher before the
        first task (None: when the reference set is a tensor of preprocessed images).
    :param fused_forward: one student forward per tower for the training and reference batches.
    :param fast_l2: the L2 gradient added directly instead of through autograd.
    :param sparse_embedding_l2: with ``fast_l2``, the L2 term of embedding tables over their
        looked-up rows only, where exact (see :class:`ZSCLPlugin`).
    :param ref_batch_size: reference images per iteration (the training batch size in the paper).
    :param ref_text_batch_size: reference sentences per iteration (None: all).
    :param text_features: ``"teacher"`` (released code) or ``"student"``.
    :param teacher: optional teacher (default: the initial model).
    :param seed: seed of the reference sampling.
    :param base_kwargs: the arguments of :class:`~avalanche_mm.strategies.FineTune`.
    """

    def __init__(
        self,
        *,
        reference_images,
        reference_texts,
        image_weight: Annotated[float, Range(ge=0.0)] = 1.0,
        text_weight: Annotated[float, Range(ge=0.0)] = 1.0,
        temperature: Annotated[float, Range(gt=0.0)] = 2.0,
        l2_weight: Annotated[float, Range(ge=0.0)] = 1.0,
        we_every: Annotated[int, Range(ge=0)] = 100,
        we_mode: Literal["code", "periodic"] = "code",
        cache_teacher_images: bool = False,
        precompute_teacher_images: Optional[bool] = None,
        fused_forward: bool = True,
        fast_l2: bool = True,
        sparse_embedding_l2: bool = True,
        ref_batch_size: Annotated[int, Range(ge=1)] = 64,
        ref_text_batch_size: Optional[Annotated[int, Range(ge=1)]] = None,
        text_features: Literal["teacher", "student"] = "teacher",
        teacher: Optional[nn.Module] = None,
        seed: int = 0,
        plugins: Optional[List] = None,
        **base_kwargs,
    ):
        self.zscl_plugin = ZSCLPlugin(
            reference_images=reference_images,
            reference_texts=reference_texts,
            image_weight=image_weight,
            text_weight=text_weight,
            temperature=temperature,
            l2_weight=l2_weight,
            we_every=we_every,
            we_mode=we_mode,
            cache_teacher_images=cache_teacher_images,
            precompute_teacher_images=precompute_teacher_images,
            fused_forward=fused_forward,
            fast_l2=fast_l2,
            sparse_embedding_l2=sparse_embedding_l2,
            ref_batch_size=ref_batch_size,
            ref_text_batch_size=ref_text_batch_size,
            text_features=text_features,
            teacher=teacher,
            seed=seed,
        )
        # first, so that later plugins see the complete gradient (the L2 part is added in after_backward)
        super().__init__(plugins=[self.zscl_plugin] + list(plugins or []), **base_kwargs)


__all__ = ["ZSCLPlugin", "ZSCL", "WE_MODES"]


# ---------------------------------------------------------------------------
# registration (config name "zscl"; parameters from ZSCL's signature)
# ---------------------------------------------------------------------------
from avalanche_mm.schema import Opt  # noqa: E402
from avalanche_mm.strategies.registry import BuildContext, CheckContext, register_method  # noqa: E402


def _reference_of(bundle):
    return getattr(bundle, "reference", None)


def _no_reference_message(where: str, benchmark: str) -> str:
    return (
        f"{where}: zscl needs a reference set (images and sentences), but benchmark {benchmark!r} "
        "provides none; use a benchmark with a reference split (e.g. demo-mtil) or, for a real-data "
        "benchmark, name one in benchmark.reference.images and benchmark.reference.texts"
    )


def _check_zscl(ctx: CheckContext, p: dict) -> list:
    bench = ctx.benchmark or {}
    ref_cfg = bench.get("reference") or {}
    if ref_cfg.get("images") is not None or ref_cfg.get("texts") is not None:
        return []  # a configured reference set (its files are checked with the benchmark)
    if ctx.bundle is not None and _reference_of(ctx.bundle) is None:
        return [_no_reference_message(f"{ctx.key}.method", bench.get("name", "?"))]
    if ctx.bundle is None:
        from avalanche_mm.benchmarks.registry import BENCHMARKS

        name = bench.get("name")
        if name in BENCHMARKS and not BENCHMARKS[name].reference:
            return [_no_reference_message(f"{ctx.key}.method", name)]
    return []


@register_method(
    "zscl",
    distributed=True,
    summary="ZSCL: reference-set distillation (both directions), L2 to task start, weight ensemble",
    params_from=ZSCL,
    exclude=("reference_images", "reference_texts", "teacher", "seed", "ref_batch_size"),
    params={
        # the config default differs from the constructor's: the study's batch size
        "ref_batch_size": Opt("int", None, nullable=True, minimum=1, help="reference images per step (default: training.batch_size)"),
        "reference_size": Opt("int", None, nullable=True, minimum=1, help="use only the first N reference images"),
        "reference_texts": Opt("int", None, nullable=True, minimum=1, help="use only the first N reference sentences"),
    },
    model_kinds=("clip",),
    check=_check_zscl,
    family="regularization",
    reference="Zheng et al., ICCV 2023",
)
def _build_zscl(ctx: BuildContext, p: dict):
    ref = _reference_of(ctx.bundle)
    if ref is None:
        raise ValueError(_no_reference_message("method", getattr(ctx.bundle, "name", "?")))
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
        we_mode=p["we_mode"],
        cache_teacher_images=p["cache_teacher_images"],
        precompute_teacher_images=p["precompute_teacher_images"],
        fused_forward=p["fused_forward"],
        fast_l2=p["fast_l2"],
        ref_batch_size=p["ref_batch_size"] or ctx.training["batch_size"],
        ref_text_batch_size=p["ref_text_batch_size"],
        text_features=p["text_features"],
        seed=ctx.seed,
        plugins=list(ctx.plugins),
        **ctx.schedule_kwargs(),
        **ctx.base_kwargs(),
    )
