"""Zero-shot / prompt classifiers and a retrieval head over a vision-language backbone.

Class embeddings come from class names x prompt templates: each class is
the L2-normalised mean of its normalised prompt embeddings (CLIP's recipe).
They are computed once and cached by :class:`ClassEmbeddingCache`, which
re-encodes only when the text encoding may have changed
(:meth:`VisionLanguageBackbone.text_state_key`), so evaluation costs
``ceil(classes * templates / text_batch_size)`` text-encoder calls, however
many batches are evaluated. While the text side is being trained (a text
parameter or text prompt requires grad, training mode, grad enabled) the
embeddings are recomputed on every forward, with gradient, for the classes
the step needs only: the sample's task's classes (multi-task heads) or the
active classes (single label space with masking), never the whole
benchmark's. Prompts are tokenised once per (classes, templates) entry.
``train_templates="first"`` trains on the first template only (ZSCL's
``dataset.template``) while evaluation uses the whole template ensemble.

- :class:`ZeroShotClassifier`: one label space (class- and
  domain-incremental), optional masking of classes not trained yet
  (a :class:`~avalanche.models.DynamicModule`: the seen classes grow through
  Avalanche's model adaptation).
- :class:`MultiTaskZeroShotClassifier`: per-task class sets (task-incremental)
  and per-dataset class names (MTIL), a
  :class:`~avalanche.models.MultiTaskModule` so Avalanche passes task labels.
- :class:`RetrievalHead` and :class:`ContrastiveRetrievalLoss`: image-text
  similarity matrices for pair data.

All heads return plain logits tensors, so Avalanche criteria and metrics work.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from avalanche.models import DynamicModule, MultiTaskModule
from torch import Tensor, nn

from ..distributed import replicated_rows
from .backbones.base import VisionLanguageBackbone

DEFAULT_TEMPLATES: Tuple[str, ...] = ("a photo of a {}.",)

Template = Union[str, Callable[[str], str]]


def _check_backbone(backbone) -> VisionLanguageBackbone:
    if not isinstance(backbone, VisionLanguageBackbone):
        raise TypeError(
            "expected an avalanche_mm.models.VisionLanguageBackbone (build one with "
            f"build_backbone(...)), got {type(backbone).__name__}."
        )
    return backbone


def _check_names(names, where: str) -> List[str]:
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise TypeError(f"{where}: class names must be a list of strings, got {names!r:.80}.")
    names = list(names)
    if not names:
        raise ValueError(f"{where}: the list of class names is empty; give at least one class.")
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValueError(f"{where}: class names must be non-empty strings, got {bad[:5]!r}.")
    return names


def _check_templates(templates, where: str) -> List[Template]:
    if isinstance(templates, str) or callable(templates):
        templates = [templates]
    templates = list(templates)
    if not templates:
        raise ValueError(f"{where}: give at least one prompt template such as 'a photo of a {{}}.'.")
    for t in templates:
        if isinstance(t, str):
            if "{}" not in t:
                raise ValueError(
                    f"{where}: template {t!r} has no '{{}}' placeholder for the class name."
                )
        elif not callable(t):
            raise TypeError(
                f"{where}: templates must be format strings with '{{}}' or callables "
                f"name -> text, got {type(t).__name__}."
            )
    return templates


def _check_train_templates(value: str) -> str:
    if value not in ("all", "first"):
        raise ValueError(
            f"train_templates must be 'all' (template ensemble) or 'first' (first template, as "
            f"ZSCL), got {value!r}."
        )
    return value


def render_prompts(class_names: Sequence[str], templates: Sequence[Template]) -> List[str]:
    """All prompts, class-major: ``[t(c) for c in classes for t in templates]``."""
    out = []
    for name in class_names:
        for t in templates:
            out.append(t.format(name) if isinstance(t, str) else t(name))
    return out


def text_requires_grad(backbone: VisionLanguageBackbone) -> bool:
    """Whether any text-tower or text-attachment parameter requires grad."""
    if any(p.requires_grad for p in backbone.tower_parameters("text")):
        return True
    if not backbone.attachments_enabled:
        return False
    for module in backbone.attachments.values():
        if "text" in getattr(module, "towers", ("vision", "text")):
            if any(p.requires_grad for p in module.parameters()):
                return True
    return False


class ClassEmbeddingCache(nn.Module):
    """Class embeddings from names x templates, cached until the text side changes.

    Holds no parameters. :meth:`get` returns ``[C, D]`` L2-normalised class
    embeddings; ``num_text_encoder_calls`` counts calls of
    ``backbone.encode_text`` made by this cache (for tests and cost reports).

    :param text_batch_size: prompts encoded per ``encode_text`` call.
    """

    def __init__(self, *, text_batch_size: int = 256):
        super().__init__()
        if isinstance(text_batch_size, bool) or int(text_batch_size) < 1:
            raise ValueError(f"text_batch_size must be a positive int, got {text_batch_size!r}.")
        self.text_batch_size = int(text_batch_size)
        self._store: Dict[tuple, Tuple[tuple, Tensor]] = {}
        self._tokens: Dict[tuple, Tensor] = {}
        self.num_text_encoder_calls = 0
        self.num_prompts_encoded = 0
        self.last_prompts: List[str] = []

    def clear(self) -> None:
        """Forget every cached embedding (they are recomputed on next use)."""
        self._store.clear()

    def tokens(self, backbone: VisionLanguageBackbone, prompts: Sequence[str]) -> Tensor:
        """Token ids of ``prompts`` on the backbone's device, tokenised once per prompt list."""
        key = (id(backbone), tuple(prompts))
        ids = self._tokens.get(key)
        if ids is None or ids.device != backbone.device:
            ids = backbone.tokenize(list(prompts)).to(backbone.device)
            if len(self._tokens) > 4096:
                self._tokens.clear()
            self._tokens[key] = ids
        return ids

    def encode(
        self,
        backbone: VisionLanguageBackbone,
        class_names: Sequence[str],
        templates: Sequence[Template],
    ) -> Tensor:
        """Encode now (no cache): ``[C, D]`` normalised class embeddings."""
        prompts = render_prompts(class_names, templates)
        ids = self.tokens(backbone, prompts)
        self.num_prompts_encoded += len(prompts)
        self.last_prompts = prompts
        chunks = []
        # the class prompts are the same on every rank: per-row random draws in the text tower
        # (MoE router noise, adapter dropout) are plain draws, not the minibatch's sharded ones
        with replicated_rows():
            for start in range(0, len(ids), self.text_batch_size):
                self.num_text_encoder_calls += 1
                chunks.append(backbone.encode_text(ids[start : start + self.text_batch_size]))
        emb = torch.cat(chunks).float()
        emb = emb.view(len(class_names), len(templates), -1).mean(dim=1)
        return F.normalize(emb, dim=-1)

    def get(
        self,
        backbone: VisionLanguageBackbone,
        class_names: Sequence[str],
        templates: Sequence[Template],
        *,
        key: Optional[tuple] = None,
    ) -> Tensor:
        """Cached ``[C, D]`` class embeddings for ``class_names`` x ``templates``.

        Re-encodes (with gradient) on every call while the text side is being
        trained; otherwise returns the cached tensor, re-encoding only after
        :meth:`VisionLanguageBackbone.text_state_key` changed.

        :param key: identifies this (names, templates) entry; by default the
            names and templates themselves.
        """
        trainable = backbone.training and torch.is_grad_enabled() and text_requires_grad(backbone)
        if trainable:
            return self.encode(backbone, class_names, templates)
        if key is None:
            key = (tuple(class_names), tuple(t if isinstance(t, str) else id(t) for t in templates))
        state = backbone.text_state_key()
        hit = self._store.get(key)
        if hit is not None and hit[0] == state:
            return hit[1]
        with torch.no_grad():
            emb = self.encode(backbone, class_names, templates)
        self._store[key] = (state, emb)
        return emb


class _ZeroShotBase:
    """Image handling shared by the zero-shot heads (mixin)."""

    backbone: VisionLanguageBackbone
    image_key: str
    feature_key: str
    fixed_logit_scale: Optional[float]

    def image_features(self, x) -> Tuple[Tensor, Optional[Tensor]]:
        """Normalised image features ``[B, D]`` and the image presence mask (or None).

        ``x`` is a plain image tensor, or a batch (dict/``MultimodalBatch``)
        holding ``x[image_key]`` images or ``x[feature_key]`` precomputed
        image features (e.g. from
        :class:`~avalanche_mm.models.FrozenFeatureCache`).
        """
        present = None
        if isinstance(x, Tensor):
            return self.backbone.encode_image(x), None
        if not isinstance(x, Mapping):
            raise TypeError(
                f"{type(self).__name__} expects an image tensor [B, 3, H, W] or a multimodal batch "
                f"with '{self.image_key}', got {type(x).__name__}."
            )
        masks = getattr(x, "present", {}) or {}
        if self.feature_key in x:
            feats = F.normalize(x[self.feature_key].float(), dim=-1)
            present = masks.get(self.feature_key)
        elif self.image_key in x:
            feats = self.backbone.encode_image(x[self.image_key])
            present = masks.get(self.image_key)
        else:
            raise KeyError(
                f"{type(self).__name__}: the batch has no '{self.image_key}' (images) nor "
                f"'{self.feature_key}' (cached image features); it has {sorted(x.keys())}. Set "
                "image_key= to the name of your image modality."
            )
        return feats, present

    def scale(self) -> Tensor:
        if self.fixed_logit_scale is not None:
            return torch.tensor(self.fixed_logit_scale, device=self.backbone.device)
        return self.backbone.logit_scale_value()

    def _training_step(self) -> bool:
        return self.training and torch.is_grad_enabled()

    def _templates_for_step(self, templates: Sequence[Template]) -> List[Template]:
        """The templates of this forward: the first only during training with
        ``train_templates="first"``, else all."""
        templates = list(templates)
        if getattr(self, "train_templates", "all") == "first" and self._training_step():
            return templates[:1]
        return templates

    def _subset_embeddings(self, names: Sequence[str], templates, key) -> Tensor:
        templates = self._templates_for_step(templates)
        return self.embedding_cache.get(self.backbone, names, templates,
                                        key=key + (tuple(t if isinstance(t, str) else id(t) for t in templates),))

    @staticmethod
    def _blank_missing(logits: Tensor, present: Optional[Tensor]) -> Tensor:
        """Rows without an image get all-zero logits (uniform prediction)."""
        if present is None or bool(present.all()):
            return logits
        return logits * present.to(logits.device, logits.dtype).unsqueeze(1)


class ZeroShotClassifier(_ZeroShotBase, DynamicModule):
    """CLIP zero-shot / prompt classifier over one label space.

    ``forward(x)`` returns ``logit_scale * f(x) @ W^T`` with ``W`` the class
    embeddings (``[B, num_classes]``). Serves class-incremental and
    domain-incremental streams. With ``mask_unseen=True`` the logits of
    classes that no training experience has contained yet are set to
    ``mask_value`` (the seen set grows in Avalanche's model adaptation, i.e.
    before each training experience); before the first training experience
    nothing is masked (pure zero-shot). :meth:`set_active_classes` sets an
    explicit active set instead.

    :param backbone: the vision-language backbone.
    :param class_names: class names, index = class id.
    :param templates: prompt templates (``"a photo of a {}."``) or callables.
    :param mask_unseen: mask classes not trained yet (see above).
    :param mask_value: logit given to masked classes.
    :param image_key: batch key of the images.
    :param feature_key: batch key of precomputed image features (used
        instead of the images when present).
    :param logit_scale: fixed multiplier; default the backbone's.
    :param text_batch_size: prompts per text-encoder call.
    :param train_templates: ``"all"`` (the template ensemble in training too) or
        ``"first"`` (training logits from the first template, as ZSCL).
    """

    def __init__(
        self,
        *,
        backbone: VisionLanguageBackbone,
        class_names: Sequence[str],
        templates: Sequence[Template] = DEFAULT_TEMPLATES,
        mask_unseen: bool = False,
        mask_value: float = -1e4,
        image_key: str = "image",
        feature_key: str = "image_features",
        logit_scale: Optional[float] = None,
        text_batch_size: int = 256,
        train_templates: str = "all",
    ):
        DynamicModule.__init__(self)
        self.train_templates = _check_train_templates(train_templates)
        self.backbone = _check_backbone(backbone)
        self.class_names = _check_names(class_names, "ZeroShotClassifier")
        self.templates = _check_templates(templates, "ZeroShotClassifier")
        self.mask_unseen = bool(mask_unseen)
        self.mask_value = float(mask_value)
        self.image_key = image_key
        self.feature_key = feature_key
        self.fixed_logit_scale = None if logit_scale is None else float(logit_scale)
        self.embedding_cache = ClassEmbeddingCache(text_batch_size=text_batch_size)
        self.seen_classes: set = set()
        self._active: Optional[List[int]] = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # -- class sets -----------------------------------------------------
    def set_class_names(self, class_names: Sequence[str]) -> None:
        """Replace the class names (e.g. when a benchmark reveals them)."""
        self.class_names = _check_names(class_names, "ZeroShotClassifier.set_class_names")

    def set_active_classes(self, classes: Optional[Iterable[int]]) -> None:
        """Restrict predictions to ``classes`` (None: back to the default rule)."""
        if classes is None:
            self._active = None
            return
        classes = sorted({int(c) for c in classes})
        bad = [c for c in classes if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(
                f"active classes {bad} are outside 0..{self.num_classes - 1} "
                f"({self.num_classes} class names)."
            )
        self._active = classes

    @property
    def active_classes(self) -> Optional[List[int]]:
        """Class ids that can be predicted (None: all)."""
        if self._active is not None:
            return list(self._active)
        if self.mask_unseen and self.seen_classes:
            return sorted(self.seen_classes)
        return None

    def adaptation(self, experience) -> None:
        """Record the classes of a training experience (Avalanche model adaptation)."""
        super().adaptation(experience)
        if self.training:
            classes = [int(c) for c in experience.classes_in_this_experience]
            too_big = [c for c in classes if c >= self.num_classes]
            if too_big:
                raise ValueError(
                    f"experience {getattr(experience, 'current_experience', '?')} has classes "
                    f"{too_big} but the classifier knows {self.num_classes} class names; give "
                    "the names of every class of the benchmark."
                )
            self.seen_classes.update(classes)

    # -- forward --------------------------------------------------------
    def class_embeddings(self) -> Tensor:
        """``[num_classes, D]`` normalised class embeddings (cached)."""
        return self._subset_embeddings(self.class_names, self.templates, ("all", tuple(self.class_names)))

    def forward(self, x) -> Tensor:
        feats, present = self.image_features(x)
        active = self.active_classes
        if active is not None and self._training_step() and len(active) < self.num_classes:
            # a training step needs the active classes only (the others are masked)
            names = [self.class_names[c] for c in active]
            weights = self._subset_embeddings(names, self.templates, ("active", tuple(names))).to(feats.device)
            part = self.scale() * feats.float() @ weights.t()
            logits = part.new_full((feats.shape[0], self.num_classes), self.mask_value)
            logits[:, active] = part
            return self._blank_missing(logits, present)
        weights = self.class_embeddings().to(feats.device)
        logits = self.scale() * feats.float() @ weights.t()
        if active is not None:
            mask = torch.ones(self.num_classes, dtype=torch.bool, device=logits.device)
            mask[active] = False
            logits = logits.masked_fill(mask, self.mask_value)
        return self._blank_missing(logits, present)


class MultiTaskZeroShotClassifier(_ZeroShotBase, MultiTaskModule):
    """Zero-shot classifier with a class set per task (task-incremental, MTIL).

    Two ways to describe the classes:

    - per-task names (``class_names={task: [names]}``): each task (dataset)
      has its own local label space ``0..C_t-1`` - the MTIL setting; tasks
      not trained yet are evaluated zero-shot with their own names;
    - one global list (``class_names=[names]``) plus ``task_classes={task:
      [global ids]}``: logits over all classes, the classes outside a
      sample's task masked. ``task_classes`` omitted: learned from the
      experiences (``classes_in_this_experience``) in model adaptation.

    ``forward(x, task_labels)`` (int or ``LongTensor[B]``) returns
    ``[B, width]`` logits, ``width`` = the largest class set among the
    batch's tasks (per-task names) or the number of classes (global);
    columns a row's task does not have are ``mask_value``. With
    ``task_labels=None`` it returns ``{task: logits}`` for every known task
    (Avalanche's multi-task convention, used by LwF).

    :param backbone: the vision-language backbone.
    :param class_names: ``{task: names}`` or a global list of names.
    :param templates: templates for every task, or ``{task: templates}``
        (MTIL uses dataset-specific templates).
    :param task_classes: global mode only: ``{task: global class ids}``.
    :param mask_value: logit of masked columns.
    :param image_key: batch key of the images.
    :param feature_key: batch key of precomputed image features.
    :param logit_scale: fixed multiplier; default the backbone's.
    :param text_batch_size: prompts per text-encoder call.
    :param train_templates: ``"all"`` or ``"first"`` (training logits from each
        task's first template, as ZSCL).

    Each task's class embeddings are computed from that task's classes only
    (global mode included), so a training step encodes ``C_t x templates``
    prompts and an evaluation ``sum_t C_t x templates_t`` once.
    """

    def __init__(
        self,
        *,
        backbone: VisionLanguageBackbone,
        class_names: Union[Mapping, Sequence[str]],
        templates: Union[Mapping, Sequence[Template]] = DEFAULT_TEMPLATES,
        task_classes: Optional[Mapping[int, Sequence[int]]] = None,
        mask_value: float = -1e4,
        image_key: str = "image",
        feature_key: str = "image_features",
        logit_scale: Optional[float] = None,
        text_batch_size: int = 256,
        train_templates: str = "all",
    ):
        MultiTaskModule.__init__(self)
        self.train_templates = _check_train_templates(train_templates)
        self.backbone = _check_backbone(backbone)
        self.mask_value = float(mask_value)
        self.image_key = image_key
        self.feature_key = feature_key
        self.fixed_logit_scale = None if logit_scale is None else float(logit_scale)
        self.embedding_cache = ClassEmbeddingCache(text_batch_size=text_batch_size)
        self.per_task_names = isinstance(class_names, Mapping)
        self.task_names: Dict[int, List[str]] = {}
        self.global_names: List[str] = []
        self.task_classes: Dict[int, List[int]] = {}
        if isinstance(templates, Mapping):
            self.task_templates = {
                int(t): _check_templates(v, f"templates[{t}]") for t, v in templates.items()
            }
            self.default_templates = None
        else:
            self.task_templates = {}
            self.default_templates = _check_templates(templates, "MultiTaskZeroShotClassifier")
        if self.per_task_names:
            if task_classes is not None:
                raise ValueError(
                    "task_classes is for a global list of class names; with per-task names "
                    "({task: names}) every task already has its own label space."
                )
            for t, names in class_names.items():
                self.add_task(int(t), names)
        else:
            self.global_names = _check_names(class_names, "MultiTaskZeroShotClassifier")
            for t, ids in (task_classes or {}).items():
                self.set_task_classes(int(t), ids)

    # -- task bookkeeping -------------------------------------------------
    def add_task(self, task: int, class_names: Sequence[str], templates=None) -> None:
        """Per-task mode: declare (or replace) task ``task``'s class names/templates."""
        if not self.per_task_names:
            raise ValueError(
                "add_task is for per-task class names; this classifier uses one global list "
                "(use set_task_classes(task, global_ids))."
            )
        self.task_names[int(task)] = _check_names(class_names, f"class_names[{task}]")
        if templates is not None:
            self.task_templates[int(task)] = _check_templates(templates, f"templates[{task}]")

    def set_task_classes(self, task: int, class_ids: Iterable[int]) -> None:
        """Global mode: the global class ids of task ``task``."""
        if self.per_task_names:
            raise ValueError("set_task_classes is for a global list of class names.")
        ids = sorted({int(c) for c in class_ids})
        bad = [c for c in ids if not 0 <= c < len(self.global_names)]
        if bad or not ids:
            raise ValueError(
                f"task {task}: class ids must be a non-empty subset of "
                f"0..{len(self.global_names) - 1}, got {sorted(class_ids)}."
            )
        self.task_classes[int(task)] = ids

    @property
    def tasks(self) -> List[int]:
        """Known task labels."""
        return sorted(self.task_names if self.per_task_names else self.task_classes)

    def templates_of(self, task: int) -> List[Template]:
        if task in self.task_templates:
            return self.task_templates[task]
        if self.default_templates is None:
            raise KeyError(
                f"no templates for task {task}; templates were given for tasks "
                f"{sorted(self.task_templates)}. Add them with add_task(task, names, templates)."
            )
        return self.default_templates

    def adaptation(self, experience) -> None:
        """Learn task -> classes from experiences (global mode without task_classes)."""
        super().adaptation(experience)
        if self.per_task_names:
            return
        tasks = list(experience.task_labels)
        if len(tasks) == 1:
            t = int(tasks[0])
            merged = set(self.task_classes.get(t, [])) | {
                int(c) for c in experience.classes_in_this_experience
            }
            self.set_task_classes(t, merged)

    # -- forward --------------------------------------------------------
    def task_class_names(self, task: int) -> List[str]:
        """The class names of task ``task`` (its local order, or its global ids' order)."""
        task = int(task)
        if self.per_task_names:
            if task not in self.task_names:
                raise KeyError(
                    f"unknown task {task}: class names are known for tasks {self.tasks}. "
                    "Declare it with add_task(task, class_names)."
                )
            return self.task_names[task]
        if task not in self.task_classes:
            raise KeyError(
                f"unknown task {task}: classes are known for tasks {self.tasks}. Pass "
                "task_classes= or let model adaptation see an experience of that task."
            )
        return [self.global_names[c] for c in self.task_classes[task]]

    def class_embeddings(self, task: int) -> Tensor:
        """``[C_t, D]`` class embeddings of task ``task``'s classes (cached; in global mode
        the rows follow ``task_classes[task]``)."""
        task = int(task)
        names = self.task_class_names(task)
        return self._subset_embeddings(names, self.templates_of(task), ("task", task, tuple(names)))

    def _logits_for(self, feats: Tensor, task: int) -> Tensor:
        weights = self.class_embeddings(task).to(feats.device)
        logits = self.scale() * feats.float() @ weights.t()
        if not self.per_task_names:
            full = logits.new_full((logits.shape[0], len(self.global_names)), self.mask_value)
            full[:, self.task_classes[task]] = logits
            logits = full
        return logits

    def forward_single_task(self, x, task_label: int) -> Tensor:
        feats, present = self.image_features(x)
        return self._blank_missing(self._logits_for(feats, int(task_label)), present)

    def forward_all_tasks(self, x) -> Dict[int, Tensor]:
        feats, present = self.image_features(x)
        return {t: self._blank_missing(self._logits_for(feats, t), present) for t in self.tasks}

    def forward(self, x, task_labels=None):
        if task_labels is None:
            return self.forward_all_tasks(x)
        feats, present = self.image_features(x)
        if isinstance(task_labels, int):
            return self._blank_missing(self._logits_for(feats, task_labels), present)
        task_labels = torch.as_tensor(task_labels, device=feats.device).view(-1)
        if task_labels.numel() != feats.shape[0]:
            raise ValueError(
                f"task_labels has {task_labels.numel()} entries for a batch of {feats.shape[0]}."
            )
        unique = [int(t) for t in torch.unique(task_labels)]
        per_task = {t: self._logits_for(feats[task_labels == t], t) for t in unique}
        width = max(v.shape[1] for v in per_task.values())
        out = feats.new_full((feats.shape[0], width), self.mask_value, dtype=torch.float32)
        for t, logits in per_task.items():
            rows = (task_labels == t).nonzero(as_tuple=True)[0]
            out[rows, : logits.shape[1]] = logits.to(out.dtype)
        return self._blank_missing(out, present)


class RetrievalHead(nn.Module):
    """Image-text similarity for pair data (retrieval, continual CLIP training).

    ``forward(batch)`` encodes ``batch[image_key]`` and ``batch[text_key]``
    and returns the image-to-text logits ``logit_scale * I @ T^T``
    (``[B, B]``, row i's matching text is column i); its transpose is the
    text-to-image matrix. Train it with :class:`ContrastiveRetrievalLoss` as
    the Avalanche criterion.

    :param backbone: the vision-language backbone.
    :param image_key: batch key of the images.
    :param text_key: batch key of the token ids.
    :param logit_scale: fixed multiplier; default the backbone's.
    """

    def __init__(
        self,
        *,
        backbone: VisionLanguageBackbone,
        image_key: str = "image",
        text_key: str = "text",
        logit_scale: Optional[float] = None,
    ):
        super().__init__()
        self.backbone = _check_backbone(backbone)
        self.image_key = image_key
        self.text_key = text_key
        self.fixed_logit_scale = None if logit_scale is None else float(logit_scale)
        self.last_image_features: Optional[Tensor] = None
        self.last_text_features: Optional[Tensor] = None

    def scale(self) -> Tensor:
        if self.fixed_logit_scale is not None:
            return torch.tensor(self.fixed_logit_scale, device=self.backbone.device)
        return self.backbone.logit_scale_value()

    def similarity(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """``[N_img, N_txt]`` scaled cosine similarities of (normalised) features."""
        img = F.normalize(image_features.float(), dim=-1)
        txt = F.normalize(text_features.float(), dim=-1)
        return self.scale() * img @ txt.t()

    def forward(self, x) -> Tensor:
        if not isinstance(x, Mapping):
            raise TypeError(
                f"RetrievalHead expects a pair batch with '{self.image_key}' and "
                f"'{self.text_key}', got {type(x).__name__}."
            )
        for key in (self.image_key, self.text_key):
            if key not in x:
                raise KeyError(
                    f"RetrievalHead: the batch has no '{key}' (it has {sorted(x.keys())})."
                )
        img = self.backbone.encode_image(x[self.image_key])
        txt = self.backbone.encode_text(x[self.text_key])
        self.last_image_features, self.last_text_features = img, txt
        return self.similarity(img, txt)

    def sharded_eval_output(self, output: Tensor, gather) -> Tensor:
        """The global ``[B, B]`` output of a minibatch evaluated in slices by several processes
        (sharded evaluation, :attr:`~avalanche_mm.strategies.MultimodalTemplateMixin.distributed_eval`):
        the slices' features are gathered (``gather``: rows of every rank, in order), kept as
        ``last_*_features``, and the similarities recomputed over the whole minibatch."""
        img, txt = gather([self.last_image_features, self.last_text_features])
        self.last_image_features, self.last_text_features = img, txt
        return self.similarity(img, txt)


class ContrastiveRetrievalLoss(nn.Module):
    """Symmetric InfoNCE on a ``[B, B]`` similarity matrix (CLIP's loss).

    Usable as an Avalanche criterion ``criterion(logits, targets)``: the
    targets (pair ids) are ignored, row i is matched with column i.
    """

    def forward(self, logits: Tensor, targets: Optional[Tensor] = None) -> Tensor:
        if logits.dim() != 2 or logits.shape[0] != logits.shape[1]:
            raise ValueError(
                f"ContrastiveRetrievalLoss expects a square [B, B] similarity matrix, got "
                f"{tuple(logits.shape)}; use it with RetrievalHead."
            )
        labels = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


__all__ = [
    "DEFAULT_TEMPLATES",
    "render_prompts",
    "text_requires_grad",
    "ClassEmbeddingCache",
    "ZeroShotClassifier",
    "MultiTaskZeroShotClassifier",
    "RetrievalHead",
    "ContrastiveRetrievalLoss",
]
