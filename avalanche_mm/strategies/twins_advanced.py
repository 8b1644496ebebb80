"""Drop-in multimodal twins of Avalanche strategies whose plugins handle ``x``.

``EWC``, ``MAS``, ``GEM``, ``AGEM``, ``DER``, ``ER_ACE`` and ``ICaRL`` have the
**same names and constructors** as in ``avalanche.training`` (the constructor
*is* Avalanche's: each twin calls it and then swaps the tensor-only parts for
the dict-aware ones of :mod:`avalanche_mm.strategies.plugins`), and add
:class:`~avalanche_mm.strategies.template.MultimodalTemplateMixin`. So::

    from avalanche.training import EWC        # before
    from avalanche_mm.strategies import EWC   # after: trains on multimodal batches

What each twin changes:

- ``EWC`` / ``MAS`` / ``GEM`` / ``AGEM``: their plugin is replaced by the
  dict-aware subclass (same configuration).
- ``DER``: the buffer computes logits on collated dict batches; the replay
  loader uses the buffer's collate; buffer and current batch are joined with
  :func:`~avalanche_mm.data.cat_batches` (variable-length modalities
  re-padded).
- ``ER_ACE``: the replay loader uses the buffer's collate and yields batches
  already on the device.
- ``ICaRL``: the iCaRL plugin is replaced by the dict-aware
  :class:`~avalanche_mm.strategies.plugins.ICaRLPlugin`; ``feature_extractor``
  takes the multimodal batch and returns ``[B, D]`` features.
"""

from __future__ import annotations

import functools
from typing import Callable, List

import torch
from avalanche.training import supervised as _sup
from avalanche.training.plugins import AGEMPlugin as _AGEMPlugin
from avalanche.training.plugins import EWCPlugin as _EWCPlugin
from avalanche.training.plugins import GEMPlugin as _GEMPlugin
from avalanche.training.plugins import MASPlugin as _MASPlugin
from avalanche.training.supervised.der import DER as _DER
from avalanche.training.supervised.er_ace import ER_ACE as _ER_ACE
from avalanche.training.supervised.icarl import ICaRL as _ICaRL
from avalanche.training.supervised.icarl import _ICaRLPlugin

from avalanche_mm.data.batch import cat_batches

from . import twins as _twins
from .plugins import (
    AGEMPlugin,
    ClassBalancedBufferWithLogits,
    EWCPlugin,
    GEMPlugin,
    ICaRLPlugin,
    MASPlugin,
    device_cycle,
    make_plugin_loader,
    split_batch,
)
from .template import MultimodalTemplateMixin


def _copy_user_plugins(kwargs) -> List:
    """Copy the caller's ``plugins`` list (Avalanche appends to it in place)."""
    user = kwargs.get("plugins")
    if user is None:
        return []
    if not isinstance(user, (list, tuple)):
        raise TypeError(f"plugins must be a list of plugins, got {type(user).__name__}.")
    kwargs["plugins"] = list(user)
    return list(user)


def _replace_plugin(strategy, stock_type: type, user_plugins: List, make: Callable):
    """Swap the stock plugin the Avalanche constructor created for ours.

    :param strategy: the freshly built strategy.
    :param stock_type: the exact Avalanche plugin class the constructor adds.
    :param user_plugins: the plugins the caller passed (left untouched).
    :param make: callable(stock_plugin) -> dict-aware plugin, same configuration.
    """
    user_ids = {id(p) for p in user_plugins}
    found = [
        i
        for i, p in enumerate(strategy.plugins)
        if type(p) is stock_type and id(p) not in user_ids
    ]
    if len(found) != 1:
        raise RuntimeError(
            f"{type(strategy).__name__}: expected the Avalanche constructor to add exactly one "
            f"{stock_type.__name__}, found {len(found)}. This avalanche-lib version is not the "
            "one avalanche-mm was written for (0.6.0)."
        )
    strategy.plugins[found[0]] = make(strategy.plugins[found[0]])
    return strategy.plugins[found[0]]


class EWC(MultimodalTemplateMixin, _sup.EWC):
    """Multimodal twin of :class:`avalanche.training.EWC` (same constructor).

    Uses :class:`~avalanche_mm.strategies.plugins.EWCPlugin`, available as
    ``self.ewc_plugin``.
    """

    @functools.wraps(_sup.EWC.__init__)
    def __init__(self, *args, **kwargs):
        user = _copy_user_plugins(kwargs)
        super().__init__(*args, **kwargs)
        self.ewc_plugin = _replace_plugin(
            self,
            _EWCPlugin,
            user,
            lambda p: EWCPlugin(p.ewc_lambda, p.mode, p.decay_factor, p.keep_importance_data),
        )


class MAS(MultimodalTemplateMixin, _sup.MAS):
    """Multimodal twin of :class:`avalanche.training.MAS` (same constructor).

    Uses :class:`~avalanche_mm.strategies.plugins.MASPlugin`, available as
    ``self.mas_plugin``.
    """

    @functools.wraps(_sup.MAS.__init__)
    def __init__(self, *args, **kwargs):
        user = _copy_user_plugins(kwargs)
        super().__init__(*args, **kwargs)
        self.mas_plugin = _replace_plugin(
            self,
            _MASPlugin,
            user,
            lambda p: MASPlugin(lambda_reg=p._lambda, alpha=p.alpha, verbose=p.verbose),
        )


class GEM(MultimodalTemplateMixin, _sup.GEM):
    """Multimodal twin of :class:`avalanche.training.GEM` (same constructor).

    Uses :class:`~avalanche_mm.strategies.plugins.GEMPlugin`, available as
    ``self.gem_plugin``.
    """

    @functools.wraps(_sup.GEM.__init__)
    def __init__(self, *args, **kwargs):
        user = _copy_user_plugins(kwargs)
        super().__init__(*args, **kwargs)
        self.gem_plugin = _replace_plugin(
            self,
            _GEMPlugin,
            user,
            lambda p: GEMPlugin(p.patterns_per_experience, p.memory_strength),
        )


class AGEM(MultimodalTemplateMixin, _sup.AGEM):
    """Multimodal twin of :class:`avalanche.training.AGEM` (same constructor).

    Uses :class:`~avalanche_mm.strategies.plugins.AGEMPlugin`, available as
    ``self.agem_plugin``.
    """

    @functools.wraps(_sup.AGEM.__init__)
    def __init__(self, *args, **kwargs):
        user = _copy_user_plugins(kwargs)
        super().__init__(*args, **kwargs)
        self.agem_plugin = _replace_plugin(
            self,
            _AGEMPlugin,
            user,
            lambda p: AGEMPlugin(p.patterns_per_experience, p.sample_size),
        )


class DER(MultimodalTemplateMixin, _DER):
    """Multimodal twin of :class:`avalanche.training.DER` (DER / DER++), same constructor.

    The buffer is the dict-aware
    :class:`~avalanche_mm.strategies.plugins.ClassBalancedBufferWithLogits`
    (rows ``(x, y, t, logits)``); replayed rows are collated with the buffer's
    multimodal collate and joined to the current batch with
    :func:`~avalanche_mm.data.cat_batches`.
    """

    @functools.wraps(_DER.__init__)
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.storage_policy = ClassBalancedBufferWithLogits(self.mem_size, adaptive_size=True)

    def _before_training_exp(self, **kwargs):
        buffer = self.storage_policy.buffer
        if len(buffer) >= self.batch_size_mem:
            loader = make_plugin_loader(
                buffer,
                batch_size=self.batch_size_mem,
                shuffle=True,
                drop_last=True,
                num_workers=kwargs.get("num_workers", 0),
                strategy=self,
            )
            self.replay_loader = device_cycle(loader, self.device)
        else:
            self.replay_loader = None
        # skip DER's own loader construction, keep the rest of the chain
        super(_DER, self)._before_training_exp(**kwargs)

    def _before_forward(self, **kwargs):
        super(_DER, self)._before_forward(**kwargs)
        if self.replay_loader is None:
            return None
        bx, by, bt, rest = split_batch(next(self.replay_loader), where="DER replay: ")
        if not rest:
            raise RuntimeError(
                "DER: replayed rows have no stored logits (expected (x, y, t, logits)); the "
                "storage policy must be ClassBalancedBufferWithLogits."
            )
        self.mbatch[0] = cat_batches([bx, self.mbatch[0]])
        self.mbatch[1] = torch.cat((by, self.mbatch[1]))
        self.mbatch[2] = torch.cat((bt, self.mbatch[2]))
        self.batch_logits = rest[0]


class ER_ACE(MultimodalTemplateMixin, _ER_ACE):
    """Multimodal twin of :class:`avalanche.training.ER_ACE`, same constructor.

    The replay loader over the class-balanced buffer uses the buffer's
    multimodal collate; replayed batches are moved to the device recursively.
    """

    def _before_training_exp(self, **kwargs):
        # same as Avalanche's deprecated ``update``: add the experience to the buffer
        self.storage_policy.post_adapt(self, self.experience)
        buffer = self.storage_policy.buffer
        if len(buffer) >= self.batch_size_mem and self.experience.current_experience > 0:
            loader = make_plugin_loader(
                buffer,
                batch_size=self.batch_size_mem,
                shuffle=True,
                drop_last=True,
                strategy=self,
            )
            self.replay_loader = device_cycle(loader, self.device)
        # skip ER_ACE's own loader construction, keep the rest of the chain
        super(_ER_ACE, self)._before_training_exp(**kwargs)


class ICaRL(MultimodalTemplateMixin, _ICaRL):
    """Multimodal twin of :class:`avalanche.training.ICaRL`, same constructor.

    ``feature_extractor`` receives the multimodal batch and returns ``[B, D]``
    features; ``classifier`` maps them to logits. The iCaRL plugin is the
    dict-aware :class:`~avalanche_mm.strategies.plugins.ICaRLPlugin`
    (``self.icarl_plugin``); ``buffer_transform`` (or None) is applied to a
    replayed sample's modality dict.
    """

    @functools.wraps(_ICaRL.__init__)
    def __init__(self, *args, **kwargs):
        user = _copy_user_plugins(kwargs)
        super().__init__(*args, **kwargs)
        self.icarl_plugin = _replace_plugin(
            self,
            _ICaRLPlugin,
            user,
            lambda p: ICaRLPlugin(p.memory_size, p.buffer_transform, p.fixed_memory),
        )


#: Every supported drop-in twin, by name (the simple ones of
#: :mod:`avalanche_mm.strategies.twins` and the ones of this module).
SUPPORTED = {
    "Naive": _twins.Naive,
    "Cumulative": _twins.Cumulative,
    "JointTraining": _twins.JointTraining,
    "Replay": _twins.Replay,
    "GDumb": _twins.GDumb,
    "LwF": _twins.LwF,
    "SynapticIntelligence": _twins.SynapticIntelligence,
    "FromScratchTraining": _twins.FromScratchTraining,
    "EWC": EWC,
    "MAS": MAS,
    "GEM": GEM,
    "AGEM": AGEM,
    "DER": DER,
    "ER_ACE": ER_ACE,
    "ICaRL": ICaRL,
}


__all__ = ["EWC", "MAS", "GEM", "AGEM", "DER", "ER_ACE", "ICaRL", "SUPPORTED"]
