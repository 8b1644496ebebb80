"""Dict-aware versions of Avalanche plugins that handle ``x`` themselves (one plugin per module,
following Avalanche's ``avalanche.training.plugins`` layout).

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

from avalanche_mm.strategies.template import resolve_collate

from ._common import device_cycle, make_plugin_loader, split_batch
from .agem import AGEMPlugin
from .der import ClassBalancedBufferWithLogits, compute_dataset_logits
from .ewc import EWCPlugin
from .gem import GEMPlugin
from .icarl import ClosestToCenterSelectionStrategy, HerdingSelectionStrategy, ICaRLPlugin, flip_images, herding_order
from .mas import MASPlugin
from .replay import ReplayPlugin

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

