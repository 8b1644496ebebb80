"""Dict-aware versions of Avalanche plugins that handle ``x`` themselves.

Avalanche 0.6.0 has plugins that build their own ``DataLoader`` and treat the
input ``x`` as one tensor (``x.to(device)``, ``x.size(0)``, ``x[:n]``,
``torch.cat``). Each class here **subclasses** the Avalanche original, keeps its
name and constructor, and overrides only the methods that touch ``x``, using
the dict-aware helpers of :mod:`avalanche_mm.data.batch`
(:func:`~avalanche_mm.data.to_device`, :func:`~avalanche_mm.data.batch_size`,
:func:`~avalanche_mm.data.index_batch`, :func:`~avalanche_mm.data.cat_batches`)
and the dataset's own ``collate_fn`` (a
:class:`~avalanche_mm.data.MultimodalCollate` for every multimodal dataset):

- :class:`EWCPlugin` - importance loop (``compute_importances``);
- :class:`MASPlugin` - importance loop (``_get_importance``);
- :class:`GEMPlugin` - episodic memory stored with :func:`cat_batches`,
  reference gradients on a dict memory;
- :class:`AGEMPlugin` - buffer loader with the data's collate, dict-aware
  reference gradient;
- :class:`ClassBalancedBufferWithLogits` (DER's buffer) - logits computed on
  collated dict batches;
- :class:`ICaRLPlugin` - exemplars stored as samples (modality dicts, not
  stacked tensors) and replayed with the data's collate; dict-aware herding,
  class means and flip augmentation;
- :class:`HerdingSelectionStrategy` and
  :class:`ClosestToCenterSelectionStrategy` (for ``ParametricBuffer``) -
  features computed on collated dict batches.

The importance / memory forwards go through Avalanche's ``avalanche_forward``
(``model(x, t)`` for multi-task modules, ``model(x)`` otherwise), exactly as the
template's own forward does. All of them also work on plain tensors.

.. note::
    Because :class:`~avalanche_mm.data.MultimodalBatch` implements ``.to``, the
    stock EWC, MAS, AGEM and herding happen to run on *collated multimodal*
    batches; they still fail on any other dict / tuple input, and GEM, DER,
    ER-ACE and iCaRL fail on every dict input. The versions here handle any
    nesting of dicts, tuples, lists and tensors.
"""

from __future__ import annotations

import collections.abc as cabc
import random
import warnings
from collections import defaultdict
from math import ceil
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, SupportsInt

import torch
from avalanche.benchmarks.utils import make_avalanche_dataset
from avalanche.benchmarks.utils.data import AvalancheDataset
from avalanche.benchmarks.utils.data_attribute import TensorDataAttribute
from avalanche.benchmarks.utils.data_loader import GroupBalancedInfiniteDataLoader
from avalanche.benchmarks.utils.flat_data import FlatData
from avalanche.models.utils import avalanche_forward
from avalanche.training.plugins import AGEMPlugin as _AGEMPlugin
from avalanche.training.plugins import EWCPlugin as _EWCPlugin
from avalanche.training.plugins import GEMPlugin as _GEMPlugin
from avalanche.training.plugins import MASPlugin as _MASPlugin
from avalanche.training.plugins import ReplayPlugin as _ReplayPlugin
from avalanche.training.storage_policy import (
    ClosestToCenterSelectionStrategy as _ClosestToCenterSelectionStrategy,
)
from avalanche.training.storage_policy import (
    HerdingSelectionStrategy as _HerdingSelectionStrategy,
)
from avalanche.training.storage_policy import ReservoirSamplingBuffer
from avalanche.training.supervised.der import (
    ClassBalancedBufferWithLogits as _ClassBalancedBufferWithLogits,
)
from avalanche.training.supervised.icarl import _ICaRLPlugin
from avalanche.training.utils import zerolike_params_dict
from torch import Tensor
from torch.utils.data import DataLoader

from avalanche_mm.data.batch import MultimodalBatch, cat_batches, index_batch, to_device
from avalanche_mm.data.dataset import MultimodalTensorDataset
from avalanche_mm.strategies.template import resolve_collate
from avalanche_mm.data.batch import batch_size as batch_rows


# --------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------
def make_plugin_loader(
    dataset: Any,
    *,
    batch_size: int,
    shuffle: bool = False,
    drop_last: bool = False,
    num_workers: int = 0,
    strategy: Any = None,
    collate_fn: Optional[Callable] = None,
) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` that uses the dataset's collate.

    This is what plugins should use instead of a bare ``DataLoader(dataset)``,
    which falls back to PyTorch's default collate and cannot pad
    variable-length modalities.

    :param dataset: the dataset (e.g. an experience's dataset or a buffer).
    :param batch_size: rows per batch (>= 1).
    :param shuffle: shuffle the rows.
    :param drop_last: drop the last incomplete batch.
    :param num_workers: loader workers.
    :param strategy: optional strategy, used for its ``default_collate_fn``
        when the dataset has no collate.
    :param collate_fn: explicit collate; overrides the dataset's.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"make_plugin_loader: batch_size must be an int >= 1, got {batch_size!r}."
        )
    collate = collate_fn if collate_fn is not None else resolve_collate(dataset, strategy)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=collate,
    )


def split_batch(batch: Any, *, where: str = "") -> tuple:
    """Split a collated minibatch ``(x, y, t, ...)`` into ``(x, y, t, rest)``.

    :param batch: a list/tuple with at least input, target and task label.
    :param where: name of the caller, for the error message.
    """
    if not isinstance(batch, (list, tuple)) or len(batch) < 3:
        got = f"{len(batch)} elements" if isinstance(batch, (list, tuple)) else type(batch).__name__
        raise ValueError(
            f"{where}expected minibatches (x, y, t, ...) from an Avalanche classification "
            f"dataset, got {got}. Build the dataset with make_multimodal_dataset (or give it "
            "targets and targets_task_labels)."
        )
    return batch[0], batch[1], batch[2], list(batch[3:])


def _param_grads(model: torch.nn.Module, device) -> Tensor:
    return torch.cat(
        [
            p.grad.flatten() if p.grad is not None else torch.zeros(p.numel(), device=device)
            for p in model.parameters()
        ]
    )


def _check_nonempty(loader_len: int, what: str) -> None:
    if loader_len == 0:
        raise ValueError(f"{what}: the dataset is empty, cannot compute importances.")


# --------------------------------------------------------------------------
# regularisation: EWC, MAS
# --------------------------------------------------------------------------
class EWCPlugin(_EWCPlugin):
    """Dict-aware :class:`avalanche.training.plugins.EWCPlugin`.

    Same constructor and penalty; the Fisher importance pass collates the
    experience's data with its own ``collate_fn``, moves the batch with
    :func:`~avalanche_mm.data.to_device` and forwards through
    ``avalanche_forward`` (task labels included), so multimodal batches with
    variable-length modalities work.

    :param ewc_lambda: weight of the penalty.
    :param mode: ``"separate"`` or ``"online"``.
    :param decay_factor: decay of the importances (``"online"`` mode only).
    :param keep_importance_data: keep importances of every experience.
    """

    def compute_importances(
        self, model, criterion, optimizer, dataset, device, batch_size, num_workers=0
    ):
        """Diagonal Fisher importances on ``dataset`` (dict-aware).

        :param model: the model.
        :param criterion: the loss (called as ``criterion(out, y)``).
        :param optimizer: the optimizer (only used to zero gradients).
        :param dataset: the experience's dataset.
        :param device: device of the model.
        :param batch_size: minibatch size of the importance pass.
        :param num_workers: loader workers.
        :return: dict parameter name -> ``ParamData`` of importances.
        """
        model.eval()
        if torch.device(device).type == "cuda":
            for module in model.modules():
                if isinstance(module, torch.nn.RNNBase):
                    warnings.warn(
                        "RNN-like modules do not support backward calls while in `eval` "
                        "mode on CUDA devices. Setting all `RNNBase` modules to `train` mode."
                    )
                    module.train()
        importances = zerolike_params_dict(model)
        loader = make_plugin_loader(dataset, batch_size=batch_size, num_workers=num_workers)
        _check_nonempty(len(loader), "EWCPlugin")
        for batch in loader:
            x, y, t, _ = split_batch(batch, where="EWCPlugin: ")
            x, y, t = to_device((x, y, t), device)
            optimizer.zero_grad()
            out = avalanche_forward(model, x, t)
            loss = criterion(out, y)
            loss.backward()
            for (k1, p), (k2, imp) in zip(model.named_parameters(), importances.items()):
                assert k1 == k2, f"parameter order changed during EWC ({k1} != {k2})"
                if p.grad is not None:
                    imp.data += p.grad.data.clone().pow(2)
        for imp in importances.values():
            imp.data /= float(len(loader))
        model.train()
        return importances


class MASPlugin(_MASPlugin):
    """Dict-aware :class:`avalanche.training.plugins.MASPlugin`.

    Same constructor and penalty; the importance pass collates the experience
    with its ``collate_fn``, moves batches with
    :func:`~avalanche_mm.data.to_device` and forwards through
    ``avalanche_forward``.

    :param lambda_reg: weight of the penalty.
    :param alpha: weight of the previous importances in the update.
    :param verbose: show a progress bar during the importance pass.
    """

    def _get_importance(self, strategy):
        importance = dict(zerolike_params_dict(strategy.model))
        if not strategy.experience:
            raise ValueError("MASPlugin: the current experience is not available.")
        dataset = strategy.experience.dataset
        if dataset is None:
            raise ValueError("MASPlugin: the current experience has no dataset.")
        strategy.model.train()
        loader = make_plugin_loader(dataset, batch_size=strategy.train_mb_size, strategy=strategy)
        _check_nonempty(len(loader), "MASPlugin")
        batches: Any = loader
        if self.verbose:
            from tqdm.auto import tqdm

            print("Computing importance")
            batches = tqdm(loader)
        for batch in batches:
            x, _, t, _ = split_batch(batch, where="MASPlugin: ")
            x, t = to_device((x, t), strategy.device)
            strategy.optimizer.zero_grad()
            out = avalanche_forward(strategy.model, x, t)
            loss = torch.norm(out, p="fro", dim=1).pow(2).mean()
            loss.backward()
            for name, param in strategy.model.named_parameters():
                if param.requires_grad and param.grad is not None:
                    importance[name].data += param.grad.abs()
        for k in importance:
            importance[k].data /= float(len(loader))
        return importance


# --------------------------------------------------------------------------
# gradient projection: GEM, A-GEM
# --------------------------------------------------------------------------
class GEMPlugin(_GEMPlugin):
    """Dict-aware :class:`avalanche.training.plugins.GEMPlugin`.

    Same constructor and projection. The episodic memory of each experience
    is one collated batch: ``memory_x[t]`` is a
    :class:`~avalanche_mm.data.MultimodalBatch` (built with
    :func:`~avalanche_mm.data.cat_batches`, so variable-length modalities are
    re-padded) or a tensor for tensor data; reference gradients are computed on
    it with ``avalanche_forward``.

    :param patterns_per_experience: memory rows per experience.
    :param memory_strength: offset of the projection (gamma in the paper).
    """

    def before_training_iteration(self, strategy, **kwargs):
        """Reference gradients of every past experience's memory."""
        n_exp = strategy.clock.train_exp_counter
        if n_exp == 0:
            return
        refs = []
        for t in range(n_exp):
            if t not in self.memory_x:
                raise RuntimeError(
                    f"GEMPlugin: no memory for experience {t}; the plugin must see "
                    "after_training_exp of every experience (was it added mid-stream?)."
                )
            strategy.model.train()
            strategy.optimizer.zero_grad()
            xref, yref, tref = to_device(
                (self.memory_x[t], self.memory_y[t], self.memory_tid[t]), strategy.device
            )
            out = avalanche_forward(strategy.model, xref, tref)
            loss = strategy._criterion(out, yref)
            loss.backward()
            refs.append(_param_grads(strategy.model, strategy.device))
        self.G = torch.stack(refs)  # (experiences, parameters)

    @torch.no_grad()
    def update_memory(self, dataset, t, batch_size):
        """Store up to ``patterns_per_experience`` rows of ``dataset`` as memory ``t``.

        :param dataset: the experience's dataset.
        :param t: the experience index.
        :param batch_size: loader batch size.
        """
        loader = make_plugin_loader(dataset, batch_size=batch_size, shuffle=True)
        xs, ys, ts = [], [], []
        total = 0
        for mbatch in loader:
            x, y, tid, _ = split_batch(mbatch, where="GEMPlugin: ")
            take = min(batch_rows(x), self.patterns_per_experience - total)
            if take <= 0:
                break
            xs.append(index_batch(x, slice(0, take)))
            ys.append(y[:take])
            ts.append(tid[:take])
            total += take
        if not xs:
            raise ValueError(
                f"GEMPlugin: experience {t} has no samples (or patterns_per_experience="
                f"{self.patterns_per_experience}); GEM needs at least one memory row."
            )
        self.memory_x[t] = _clone(cat_batches(xs))
        self.memory_y[t] = torch.cat(ys).clone()
        self.memory_tid[t] = torch.cat(ts).clone()


def _clone(obj: Any) -> Any:
    """Deep-copy the tensors of a nested batch (detach from loader storage)."""
    if isinstance(obj, Tensor):
        return obj.clone()
    if isinstance(obj, MultimodalBatch):
        return MultimodalBatch(
            {k: v.clone() for k, v in obj.items()},
            present={k: v.clone() for k, v in obj.present.items()},
            lengths={k: v.clone() for k, v in obj.lengths.items()},
            pad_values=obj.pad_values,
        )
    if isinstance(obj, cabc.Mapping):
        return type(obj)({k: _clone(v) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone(v) for v in obj)
    return obj


class AGEMPlugin(_AGEMPlugin):
    """Dict-aware :class:`avalanche.training.plugins.AGEMPlugin`.

    Same constructor and projection. The buffer loader always uses the stored
    data's ``collate_fn``; the reference minibatch is moved with
    :func:`~avalanche_mm.data.to_device` and forwarded with its task labels.
    When there are more experiences than ``sample_size``, each experience still
    contributes one row (instead of a zero-sized loader).

    :param patterns_per_experience: buffer rows per experience.
    :param sample_size: rows of the reference minibatch.
    """

    def __init__(self, patterns_per_experience: int, sample_size: int):
        if int(patterns_per_experience) < 1 or int(sample_size) < 1:
            raise ValueError(
                "AGEMPlugin: patterns_per_experience and sample_size must be >= 1, got "
                f"{patterns_per_experience} and {sample_size}."
            )
        super().__init__(patterns_per_experience, sample_size)

    def before_training_iteration(self, strategy, **kwargs):
        """Reference gradient on a minibatch sampled from the buffer."""
        if len(self.buffers) == 0:
            return
        strategy.model.train()
        strategy.optimizer.zero_grad()
        xref, yref, tref, _ = split_batch(self.sample_from_memory(), where="AGEMPlugin: ")
        xref, yref, tref = to_device((xref, yref, tref), strategy.device)
        out = avalanche_forward(strategy.model, xref, tref)
        loss = strategy._criterion(out, yref)
        loss.backward()
        self.reference_gradients = torch.cat(
            [
                p.grad.view(-1) if p.grad is not None else torch.zeros(p.numel(), device=strategy.device)
                for _, p in strategy.model.named_parameters()
            ]
        )
        strategy.optimizer.zero_grad()

    @torch.no_grad()
    def update_memory(self, dataset, num_workers=0, **kwargs):
        """Add a random subset of ``dataset`` to the buffer and rebuild the loader.

        :param dataset: the experience's dataset.
        :param num_workers: loader workers.
        """
        if num_workers > 0:
            warnings.warn("Num workers > 0 is known to cause heavy slowdowns in AGEM.")
        if len(dataset) == 0:
            raise ValueError("AGEMPlugin: cannot add an empty experience to the buffer.")
        if len(dataset) > self.patterns_per_experience:
            indices = list(range(len(dataset)))
            random.shuffle(indices)  # Python's RNG, as Avalanche's A-GEM
            dataset = dataset.subset(indices[: self.patterns_per_experience])
        self.buffers.append(dataset)
        self.buffer_dataloader = GroupBalancedInfiniteDataLoader(
            self.buffers,
            batch_size=max(1, self.sample_size // len(self.buffers)),
            num_workers=num_workers,
            pin_memory=False,
            persistent_workers=num_workers > 0,
            collate_fn=resolve_collate(self.buffers[0]),
        )
        self.buffer_dliter = iter(self.buffer_dataloader)


# --------------------------------------------------------------------------
# DER's buffer
# --------------------------------------------------------------------------
@torch.no_grad()
def compute_dataset_logits(
    dataset, model, batch_size, device, num_workers=0, collate_fn=None
) -> List[Tensor]:
    """Logits of ``model`` on every sample of ``dataset`` (dict-aware).

    Dict-aware replacement of ``avalanche.training.supervised.der.compute_dataset_logits``:
    the loader uses the dataset's collate, the batch is moved with
    :func:`~avalanche_mm.data.to_device` and the forward goes through
    ``avalanche_forward`` with the task labels.

    :param dataset: the dataset (rows ``(x, y, t, ...)``).
    :param model: the model.
    :param batch_size: loader batch size.
    :param device: model device.
    :param num_workers: loader workers.
    :param collate_fn: optional explicit collate.
    :return: one logits row (on CPU) per sample, in dataset order.
    """
    was_training = model.training
    model.eval()
    logits: List[Tensor] = []
    loader = make_plugin_loader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn
    )
    try:
        for batch in loader:
            x, _, t, _ = split_batch(batch, where="compute_dataset_logits: ")
            x, t = to_device((x, t), device)
            out = avalanche_forward(model, x, t).detach().cpu()
            logits.extend(torch.clone(row) for row in out)
    finally:
        if was_training:
            model.train()
    return logits


class ClassBalancedBufferWithLogits(_ClassBalancedBufferWithLogits):
    """Dict-aware DER buffer (class-balanced reservoir storing logits).

    Same constructor as Avalanche's. The logits of new samples are computed
    with :func:`compute_dataset_logits` (collated dict batches); stored rows
    are ``(x, y, t, logits)`` and keep the data's multimodal collate.

    :param max_size: buffer capacity.
    :param adaptive_size: divide the capacity over the classes seen so far.
    :param total_num_classes: fixed number of classes when not adaptive.
    """

    def update(self, strategy, **kwargs):
        """Add the current experience (with its logits) to the buffer."""
        assert strategy.experience is not None
        new_data: AvalancheDataset = strategy.experience.dataset
        logits = compute_dataset_logits(
            new_data.eval(),
            strategy.model,
            strategy.train_mb_size,
            strategy.device,
            num_workers=kwargs.get("num_workers", 0),
            collate_fn=resolve_collate(new_data, strategy),
        )
        with_logits = make_avalanche_dataset(
            new_data,
            data_attributes=[
                TensorDataAttribute(
                    FlatData([logits], discard_elements_not_in_indices=True),
                    name="logits",
                    use_in_getitem=True,
                )
            ],
        )
        cl_idxs: Dict[int, List[int]] = defaultdict(list)
        targets: Sequence[SupportsInt] = getattr(new_data, "targets")
        for idx, target in enumerate(targets):
            cl_idxs[int(target)].append(idx)
        cl_datasets = {c: with_logits.subset(idxs) for c, idxs in cl_idxs.items()}
        self.seen_classes.update(cl_datasets.keys())
        lens = self.get_group_lengths(len(self.seen_classes))
        class_to_len = dict(zip(self.seen_classes, lens))
        for class_id, new_data_c in cl_datasets.items():
            size = class_to_len[class_id]
            if class_id in self.buffer_groups:
                old = self.buffer_groups[class_id]
                old.update_from_dataset(new_data_c)
                old.resize(strategy, size)
            else:
                new_buffer = ReservoirSamplingBuffer(size)
                new_buffer.update_from_dataset(new_data_c)
                self.buffer_groups[class_id] = new_buffer
        for class_id in self.buffer_groups:
            self.buffer_groups[class_id].resize(strategy, class_to_len[class_id])


# --------------------------------------------------------------------------
# replay iterators used by the DER / ER-ACE twins
# --------------------------------------------------------------------------
class _MovableDict(dict):
    """A plain dict batch with a ``.to`` (stock code calls ``x.to(device)``)."""

    def to(self, *args, **kwargs):
        device = torch.empty(0).to(*args, **kwargs).device
        return _MovableDict(to_device(dict(self), device))


def device_cycle(loader: DataLoader, device) -> Iterator[list]:
    """Endless iterator over ``loader`` yielding minibatches moved to ``device``.

    A plain ``dict`` input is wrapped so that it also has ``.to`` (stock
    Avalanche code moves replayed inputs with ``x.to(device)``).

    :param loader: the (buffer) loader.
    :param device: target device.
    """
    while True:
        n = 0
        for batch in loader:
            n += 1
            batch = list(to_device(list(batch), device))
            if isinstance(batch[0], dict) and not hasattr(batch[0], "to"):
                batch[0] = _MovableDict(batch[0])
            yield batch
        if n == 0:
            raise RuntimeError(
                "device_cycle: the replay loader produced no batch (buffer smaller than "
                "the replay batch size with drop_last=True)."
            )


# --------------------------------------------------------------------------
# exemplar selection (herding) for ParametricBuffer
# --------------------------------------------------------------------------
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



class ReplayPlugin(_ReplayPlugin):
    """Avalanche's ``ReplayPlugin`` that updates its buffer through ``post_adapt``.

    Avalanche 0.6.0's plugin calls the storage policy's deprecated
    ``update`` after every experience (one ``DeprecationWarning`` each time).
    This twin calls ``post_adapt(strategy, strategy.experience)`` - what
    ``update`` forwards to - and still calls ``update`` for a custom policy
    that overrides it. Same constructor as Avalanche's.
    """

    def after_training_exp(self, strategy, **kwargs):
        from avalanche.training.storage_policy import ExemplarsBuffer

        policy = self.storage_policy
        if type(policy).update is not ExemplarsBuffer.update:
            policy.update(strategy, **kwargs)
        else:
            policy.post_adapt(strategy, strategy.experience)

__all__ = [
    "ReplayPlugin",
    "EWCPlugin",
    "MASPlugin",
    "GEMPlugin",
    "AGEMPlugin",
    "ClassBalancedBufferWithLogits",
    "ICaRLPlugin",
    "HerdingSelectionStrategy",
    "ClosestToCenterSelectionStrategy",
    "compute_dataset_logits",
    "herding_order",
    "flip_images",
    "device_cycle",
    "make_plugin_loader",
    "resolve_collate",
    "split_batch",
]
