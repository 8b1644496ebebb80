"""Dict-aware multi-task (multi-head) modules.

Avalanche 0.6.0's :class:`~avalanche.models.MultiTaskModule` splits a
mixed-task minibatch with ``x.shape[0]`` and ``x[task_mask]``, which fails
for a multimodal (dict) ``x``. :class:`MultimodalMultiTaskModule` does the
same routing with :func:`~avalanche_mm.data.batch_size` and
:func:`~avalanche_mm.data.index_batch`, so any multi-head model works on
:class:`~avalanche_mm.data.MultimodalBatch` inputs.
"""

from __future__ import annotations

import torch
from avalanche.models import MultiHeadClassifier, MultiTaskModule
from torch import nn

from avalanche_mm.data.batch import batch_size, index_batch


class MultimodalMultiTaskModule(MultiTaskModule):
    """A :class:`~avalanche.models.MultiTaskModule` that accepts multimodal inputs.

    Subclasses implement ``forward_single_task(x, task_label)`` as usual.
    """

    def forward(self, x, task_labels):
        """Route each row of ``x`` to the head of its task.

        :param x: a (multimodal) batch.
        :param task_labels: an int (whole batch), a tensor of per-row task
            labels, or None (returns ``{task: output}`` for every known task).
        """
        if task_labels is None:
            return self.forward_all_tasks(x)
        if isinstance(task_labels, int):
            return self.forward_single_task(x, task_labels)
        task_labels = torch.as_tensor(task_labels)
        n = batch_size(x)
        if task_labels.shape != (n,):
            raise ValueError(
                f"task_labels must hold one label per row: expected shape ({n},), got "
                f"{tuple(task_labels.shape)}."
            )
        unique = torch.unique(task_labels)
        if len(unique) == 1:
            return self.forward_single_task(x, int(unique.item()))
        out = None
        for task in unique.tolist():
            mask = task_labels == task
            out_task = self.forward_single_task(index_batch(x, mask), task)
            if out_task.dim() != 2:
                raise ValueError(
                    "multi-head outputs must be [batch, classes], got shape "
                    f"{tuple(out_task.shape)} for task {task}."
                )
            if out is None:
                width = max(self.max_class_label, out_task.shape[1])
                out = out_task.new_zeros(n, width)
            elif out_task.shape[1] > out.shape[1]:
                out = torch.cat([out, out.new_zeros(n, out_task.shape[1] - out.shape[1])], 1)
            out[mask.to(out.device), : out_task.shape[1]] = out_task
        return out


class MultiHeadFusionClassifier(MultimodalMultiTaskModule):
    """A shared multimodal encoder with one linear head per task.

    :param encoder: module mapping a (multimodal) batch to features ``[B, F]``
        (for example a :class:`~avalanche_mm.models.FusionModel`'s encoders, or
        any feature extractor).
    :param in_features: feature size ``F``.
    :param initial_out_features: initial head size (heads grow with the
        classes of their task, as Avalanche's ``MultiHeadClassifier``).
    :param masking: Avalanche's per-head unit masking. Off by default:
        in Avalanche 0.6.0 it indexes a tensor with the experience's class
        *set* (``classes_in_this_experience`` of new-style benchmarks) and
        fails; turn it on only with benchmarks whose class timelines are lists.
    """

    def __init__(
        self,
        *,
        encoder: nn.Module,
        in_features: int,
        initial_out_features: int = 2,
        masking: bool = False,
    ):
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be an nn.Module, got {type(encoder).__name__}.")
        self.encoder = encoder
        self.heads = MultiHeadClassifier(
            in_features, initial_out_features=initial_out_features, masking=masking
        )

    def forward_single_task(self, x, task_label: int):
        return self.heads(self.encoder(x), task_label)


__all__ = ["MultimodalMultiTaskModule", "MultiHeadFusionClassifier"]
