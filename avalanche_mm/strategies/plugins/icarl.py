"""iCaRL (Rebuffi et al., 2017), dict-aware: exemplars stored as samples, dict-aware herding and class means."""

from __future__ import annotations

import collections.abc as cabc
from math import ceil
from typing import Any, Callable, List, Optional

import torch
from avalanche.benchmarks.utils.data import AvalancheDataset
from avalanche.models.utils import avalanche_forward
from avalanche.training.storage_policy import ClosestToCenterSelectionStrategy as _ClosestToCenterSelectionStrategy
from avalanche.training.storage_policy import HerdingSelectionStrategy as _HerdingSelectionStrategy
from avalanche.training.supervised.icarl import _ICaRLPlugin
from torch import Tensor

from avalanche_mm.data.batch import MultimodalBatch, to_device
from avalanche_mm.data.dataset import MultimodalTensorDataset
from avalanche_mm.strategies.template import resolve_collate

from ._common import make_plugin_loader, split_batch


class _DictAwareFeatureSelection:
    """Dict-aware ``make_sorted_indices`` for feature-based selection strategies.

    Features are computed on batches collated with the data's ``collate_fn``,
    moved with :func:`~avalanche_mm.data.to_device`, forwarded through
    ``avalanche_forward`` (task labels included) and flattened to
    ``[N, D]``; the model's train/eval mode is restored afterwards (the stock
    strategy leaves the model in eval mode).
    """

    @torch.no_grad()
    def make_sorted_indices(self, strategy, data) -> List[int]:
        extractor = self.feature_extractor  # FeatureExtractorBackbone(model, layer_name)
        model = extractor.model
        modes = {m: m.training for m in model.modules()}
        model.eval()
        loader = make_plugin_loader(
            data, batch_size=strategy.eval_mb_size or strategy.train_mb_size, strategy=strategy
        )
        feats = []
        try:
            for batch in loader:
                x, _, t, _ = split_batch(batch, where=f"{type(self).__name__}: ")
                x, t = to_device((x, t), strategy.device)
                extractor.output = None
                avalanche_forward(model, x, t)
                out = extractor.output
                if not isinstance(out, Tensor):
                    raise TypeError(
                        f"{type(self).__name__}: layer '{extractor.output_layer_name}' produced "
                        f"{type(out).__name__}, expected a tensor [B, ...] of features. Pick a "
                        "layer that outputs one tensor (layer_name='' means the model's output)."
                    )
                feats.append(out.flatten(1))
        finally:
            for m, training in modes.items():
                m.training = training
        if not feats:
            return []
        return list(self.make_sorted_indices_from_features(torch.cat(feats)))


class HerdingSelectionStrategy(_DictAwareFeatureSelection, _HerdingSelectionStrategy):
    """Dict-aware :class:`avalanche.training.storage_policy.HerdingSelectionStrategy`.

    Herding as in iCaRL: greedily pick the sample whose addition keeps the
    mean of the selected features closest to the mean of all features.

    :param model: the model whose layer gives the features (takes the
        multimodal batch).
    :param layer_name: name of the layer (as in ``model.named_modules()``)
        whose output are the features; ``""`` is the model's own output.
    """


class ClosestToCenterSelectionStrategy(
    _DictAwareFeatureSelection, _ClosestToCenterSelectionStrategy
):
    """Dict-aware :class:`avalanche.training.storage_policy.ClosestToCenterSelectionStrategy`.

    :param model: the model whose layer gives the features.
    :param layer_name: name of the feature layer (``""``: the model's output).
    """


# --------------------------------------------------------------------------
# iCaRL
# --------------------------------------------------------------------------
def flip_images(x: Any) -> Any:
    """Horizontally flip every 4-D modality (``[B, C, H, W]`` images) of a batch.

    Other modalities (text, audio, ...) are left as they are. Used by iCaRL's
    class means, which average the features of a sample and of its mirror.

    :param x: a tensor or a (multimodal) dict batch.
    :return: the batch with images flipped, or None when it has no image.
    """
    if isinstance(x, Tensor):
        return torch.flip(x, [3]) if x.dim() == 4 else None
    if isinstance(x, cabc.Mapping):
        images = [k for k, v in x.items() if isinstance(v, Tensor) and v.dim() == 4]
        if not images:
            return None
        if isinstance(x, MultimodalBatch):
            data = dict(x)
            for k in images:
                data[k] = torch.flip(data[k], [3])
            return MultimodalBatch(
                data, present=x.present, lengths=x.lengths, pad_values=x.pad_values
            )
        out = dict(x)
        for k in images:
            out[k] = torch.flip(out[k], [3])
        return type(x)(out) if type(x) is not dict else out
    return None


class ICaRLPlugin(_ICaRLPlugin):
    """Dict-aware iCaRL plugin (exemplars, herding, nearest-mean classifier).

    Same constructor as Avalanche's ``_ICaRLPlugin``. Differences, all needed
    for multimodal inputs:

    - exemplars are stored as **samples** (the modality dicts as read with
      the eval transforms, like Avalanche stores eval-transformed tensors):
      ``x_memory[i]`` is the list of exemplar ``x`` dicts of the i-th class,
      ``t_memory[i]`` their task labels. They are replayed through a dataset
      that uses the experience's multimodal collate (variable lengths and
      missing modalities included) and ``buffer_transform``;
    - features for herding and class means are computed on collated batches
      by ``model.feature_extractor`` (which takes the multimodal batch);
    - the flip augmentation of the class means flips the image modalities
      (4-D tensors) only;
    - the classes of an experience come from
      ``experience.classes_in_this_experience`` (new-style Avalanche
      benchmarks have no ``experience.benchmark``), and the class-means table
      is sized by the train classifier's output.

    :param memory_size: exemplar budget.
    :param buffer_transform: optional callable applied to a replayed sample's
        ``x`` (the modality dict, e.g. a
        :class:`~avalanche_mm.data.ModalityTransform`), as Avalanche applies it
        on top of the eval transforms.
    :param fixed_memory: share ``memory_size`` over the classes seen (True) or
        keep ``memory_size`` exemplars per class (False).
    """

    def __init__(self, memory_size, buffer_transform=None, fixed_memory=True):
        if int(memory_size) < 1:
            raise ValueError(f"ICaRLPlugin: memory_size must be >= 1, got {memory_size}.")
        if buffer_transform is not None and not callable(buffer_transform):
            raise TypeError(
                f"ICaRLPlugin: buffer_transform must be callable or None, got {buffer_transform!r}."
            )
        super().__init__(memory_size, buffer_transform, fixed_memory)
        self.t_memory: List[List[int]] = []
        self._collate: Optional[Callable] = None
        self._new_classes: List[int] = []

    # -- exemplar datasets ------------------------------------------------------
    def _exemplar_dataset(self, xs, ys, ts, transform=None) -> AvalancheDataset:
        """A task-aware dataset over stored samples, with the data's collate."""
        from avalanche.benchmarks.utils import DataAttribute
        from avalanche.benchmarks.utils.classification_dataset import (
            TaskAwareSupervisedClassificationDataset,
        )
        from avalanche.benchmarks.utils.transform_groups import TransformGroups

        if xs and isinstance(xs[0], cabc.Mapping):
            base = MultimodalTensorDataset(
                {k: [x[k] for x in xs] for k in xs[0].keys()}, ys
            )
        else:
            base = _SampleList(xs, ys)
        groups = None
        if transform is not None:
            groups = TransformGroups({"train": transform, "eval": transform})
        return TaskAwareSupervisedClassificationDataset(
            [base],
            data_attributes=[
                DataAttribute(list(ys), "targets"),
                DataAttribute(list(ts), "targets_task_labels", use_in_getitem=True),
            ],
            transform_groups=groups,
            collate_fn=self._collate,
        )

    def memory_dataset(self) -> Optional[AvalancheDataset]:
        """All exemplars as one replay dataset (with ``buffer_transform``), or None."""
        xs = [x for cls in self.x_memory for x in cls]
        if not xs:
            return None
        ys = [y for cls in self.y_memory for y in cls]
        ts = [t for cls in self.t_memory for t in cls]
        return self._exemplar_dataset(xs, ys, ts, self.buffer_transform)

    def after_train_dataset_adaptation(self, strategy, **kwargs):
        if strategy.clock.train_exp_counter != 0:
            memory = self.memory_dataset()
            if memory is not None:
                strategy.adapted_dataset = strategy.adapted_dataset.concat(memory.train())

    def before_training_exp(self, strategy, **kwargs):
        assert strategy.experience is not None
        exp = strategy.experience
        classes = getattr(exp, "classes_in_this_experience", None)
        if classes is None:
            classes = sorted({int(c) for c in exp.dataset.targets})
        self._new_classes = [int(c) for c in classes if int(c) not in self.observed_classes]
        self.observed_classes.extend(self._new_classes)
        if self._collate is None:
            self._collate = resolve_collate(exp.dataset, strategy)

    def before_forward(self, strategy, **kwargs):
        if self.input_size is None:
            x = strategy.mb_x
            with torch.no_grad():
                if isinstance(x, cabc.Mapping):
                    self.input_size = {k: tuple(v.shape[1:]) for k, v in x.items()}
                else:
                    self.input_size = tuple(x.shape[1:])
                self.output_size = strategy.model(x).shape[1]
                feats = strategy.model.feature_extractor(x)
                if not isinstance(feats, Tensor) or feats.dim() != 2:
                    raise TypeError(
                        "ICaRL: feature_extractor must return a tensor [B, D] for the "
                        f"multimodal batch, got {type(feats).__name__}"
                        + (f" of shape {tuple(feats.shape)}" if isinstance(feats, Tensor) else "")
                        + "."
                    )
                self.embedding_size = feats.shape[1]

    # -- exemplars --------------------------------------------------------------
    def _protos_per_class(self) -> int:
        if self.fixed_memory:
            return int(ceil(self.memory_size / len(self.observed_classes)))
        return int(self.memory_size)

    @torch.no_grad()
    def _features(self, strategy, dataset, flip: bool = False) -> Optional[Tensor]:
        """Column-normalised features ``D`` of shape ``[E, N]`` (as in iCaRL)."""
        loader = make_plugin_loader(
            dataset, batch_size=strategy.eval_mb_size or strategy.train_mb_size, strategy=strategy
        )
        feats = []
        for batch in loader:
            x, _, _, _ = split_batch(batch, where="ICaRLPlugin: ")
            x = to_device(x, strategy.device)
            if flip:
                x = flip_images(x)
                if x is None:
                    return None
            feats.append(strategy.model.feature_extractor(x).detach())
        D = torch.cat(feats).T
        return D / torch.norm(D, dim=0)

    def construct_exemplar_set(self, strategy):
        assert strategy.experience is not None
        nb_protos_cl = self._protos_per_class()
        dataset = strategy.experience.dataset
        targets = torch.as_tensor(list(dataset.targets))
        for cls in self._new_classes:
            idx = torch.where(targets == cls)[0].tolist()
            if not idx:
                raise ValueError(
                    f"ICaRL: class {cls} is listed in the experience but has no sample."
                )
            cd = dataset.subset(idx).eval()
            order = herding_order(self._features(strategy, cd), nb_protos_cl)
            picked = torch.where(order > 0)[0]
            picked = picked[torch.argsort(order[picked])]  # by herding rank
            samples = [cd[int(j)] for j in picked]
            self.x_memory.append([s[0] for s in samples])
            self.y_memory.append([cls] * len(samples))
            self.t_memory.append([int(s[2]) for s in samples])
            self.order.append(order[picked])

    def reduce_exemplar_set(self, strategy):
        nb_protos_cl = self._protos_per_class()
        for i in range(len(self.x_memory) - len(self._new_classes)):
            keep = torch.where(self.order[i] < nb_protos_cl + 1)[0].tolist()
            self.x_memory[i] = [self.x_memory[i][j] for j in keep]
            self.y_memory[i] = [self.y_memory[i][j] for j in keep]
            self.t_memory[i] = [self.t_memory[i][j] for j in keep]
            self.order[i] = self.order[i][keep]

    def compute_class_means(self, strategy):
        if self.class_means == {}:
            n_classes = max(int(self.output_size or 0), max(self.observed_classes) + 1)
            self.class_means = {
                c: torch.zeros(self.embedding_size, device=strategy.device)
                for c in range(n_classes)
            }
        for i, xs in enumerate(self.x_memory):
            if not xs:
                continue
            label = self.y_memory[i][0]
            data = self._exemplar_dataset(xs, self.y_memory[i], self.t_memory[i])
            D = self._features(strategy, data)
            D2 = self._features(strategy, data, flip=True)
            if D2 is None:  # no image modality to mirror
                D2 = D
            mean = (D.mean(dim=1) + D2.mean(dim=1)) / 2
            self.class_means[label] = mean / torch.norm(mean)
        strategy.model.eval_classifier.replace_class_means_dict(self.class_means)


class _SampleList(torch.utils.data.Dataset):
    """``(x, y)`` pairs over stored inputs (tensor exemplars)."""

    def __init__(self, xs, ys):
        self.xs, self.ys = list(xs), list(ys)

    def __len__(self):
        return len(self.xs)

    def __getitem__(self, i):
        return self.xs[i], self.ys[i]


def herding_order(D: Tensor, n: int, max_iter: int = 1000) -> Tensor:
    """iCaRL herding ranks of the columns of ``D`` (``[E, N]`` features).

    :param D: features, one column per sample (normalised).
    :param n: number of exemplars to rank.
    :param max_iter: iteration cap of the herding loop (as in iCaRL).
    :return: float tensor ``[N]``: rank 1..n of each selected sample, 0 for
        samples not selected.
    """
    mu = torch.mean(D, dim=1)
    order = torch.zeros(D.shape[1])
    w_t = mu
    i, added, selected = 0, 0, []
    n = min(n, D.shape[1])
    while added != n and i < max_iter:
        ind_max = int(torch.argmax(torch.mm(w_t.unsqueeze(0), D)))
        if ind_max not in selected:
            order[ind_max] = 1 + added
            added += 1
            selected.append(ind_max)
        w_t = w_t + mu - D[:, ind_max]
        i += 1
    return order


__all__ = ['HerdingSelectionStrategy', 'ClosestToCenterSelectionStrategy', 'flip_images', 'ICaRLPlugin', 'herding_order']
