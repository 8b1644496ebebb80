"""Attaching modules to a backbone's transformer blocks without forking it.

An attachment is an ``nn.Module`` registered under ``backbone.attachments``
(so it moves with ``.to()``, is saved in the state dict and shows up in
``parameters()``) that acts on the forward pass through PyTorch hooks on
the backbone's own blocks. Nothing of the pretrained model is replaced or
copied; :meth:`BackboneAttachment.detach` removes the hooks and the module.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from torch import Tensor, nn

from ..backbones.base import TOWERS, VisionLanguageBackbone, check_tower


class BackboneAttachment(nn.Module):
    """Base class of adapters/prompts living on a :class:`VisionLanguageBackbone`.

    Subclasses implement :meth:`_install` (register hooks, return their
    handles). ``enabled`` switches one attachment off;
    ``backbone.attachments_disabled()`` switches all of them off.

    :param towers: the towers this attachment acts on.
    """

    def __init__(self, *, towers: Sequence[str]):
        super().__init__()
        towers = tuple(check_tower(t) for t in towers)
        if not towers:
            raise ValueError(f"an attachment needs at least one tower among {TOWERS}.")
        self.towers: Tuple[str, ...] = towers
        self.enabled = True
        self._handles: List = []
        # the backbone is kept outside the module tree (no recursion in state_dict)
        self._backbone_ref: List[VisionLanguageBackbone] = []
        self._name: Optional[str] = None

    @property
    def backbone(self) -> Optional[VisionLanguageBackbone]:
        return self._backbone_ref[0] if self._backbone_ref else None

    @property
    def active(self) -> bool:
        """True when attached, enabled and the backbone's attachments are on."""
        b = self.backbone
        if b is None or not self.enabled or not b.attachments_enabled:
            return False
        # removed from backbone.attachments by other means: act no more
        return b.attachments[self._name] is self if self._name in b.attachments else False

    def attach(self, backbone: VisionLanguageBackbone, *, name: str) -> "BackboneAttachment":
        """Register on ``backbone`` under ``attachments[name]`` and install hooks."""
        if not isinstance(backbone, VisionLanguageBackbone):
            raise TypeError(
                "attachments go on an avalanche_mm.models.VisionLanguageBackbone, got "
                f"{type(backbone).__name__}."
            )
        if self.backbone is not None:
            raise RuntimeError(
                f"this {type(self).__name__} is already attached as '{self._name}'; detach() it "
                "first or build a new one."
            )
        backbone.add_attachment(name, self)
        self._backbone_ref.append(backbone)
        self._name = name
        try:
            self._handles = list(self._install(backbone))
        except Exception:
            self._backbone_ref.clear()
            backbone.remove_attachment(name)
            raise
        return self

    def detach(self) -> "BackboneAttachment":
        """Remove the hooks and unregister from the backbone."""
        b = self.backbone
        if b is not None and self._name in b.attachments and b.attachments[self._name] is self:
            b.remove_attachment(self._name)  # calls _release()
        self._release()
        return self

    def _release(self) -> None:
        """Remove the hooks and forget the backbone (called on removal)."""
        for record in self._handles:
            record.remove()
        self._handles = []
        self._backbone_ref.clear()
        self._name = None

    def _hook(
        self, module: nn.Module, method: str, *extra, pre: bool = False, with_kwargs: bool = False
    ) -> "HookRecord":
        """Register ``self.<method>(*extra, *hook_args)`` as a forward (pre-)hook of ``module``.

        The hook is a plain object pointing at this attachment and the
        record points at ``module`` (no closures, no weak references), so a
        ``copy.deepcopy`` of the model (LwF/ZSCL teachers) gets hooks bound
        to the copied attachment, and a copy's detach() leaves the original
        alone.
        """
        fn = _HookCall(self, method, extra)
        if pre:
            handle = module.register_forward_pre_hook(fn, with_kwargs=with_kwargs)
        else:
            handle = module.register_forward_hook(fn, with_kwargs=with_kwargs)
        return HookRecord(module, handle.id)


class _HookCall:
    """Picklable, deepcopy-friendly hook: calls ``owner.<method>(*extra, *args)``."""

    def __init__(self, owner: nn.Module, method: str, extra: tuple):
        self.owner = owner
        self.method = method
        self.extra = tuple(extra)

    def __call__(self, *args):
        return getattr(self.owner, self.method)(*self.extra, *args)


class HookRecord:
    """A registered hook: the module and the hook id (removable, deepcopy-safe)."""

    _DICTS = (
        "_forward_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_hooks_always_called",
        "_forward_pre_hooks",
        "_forward_pre_hooks_with_kwargs",
    )

    def __init__(self, module: nn.Module, hook_id: int):
        self.module = module
        self.hook_id = hook_id

    def remove(self) -> None:
        for name in self._DICTS:
            hooks = getattr(self.module, name, None)
            if hooks is not None:
                hooks.pop(self.hook_id, None)

    def _install(self, backbone: VisionLanguageBackbone):  # pragma: no cover - abstract
        raise NotImplementedError


def seq_first_token(x: Tensor, batch_first: bool) -> Tensor:
    """Token 0 of every sequence: ``[B, D]``."""
    return x[:, 0] if batch_first else x[0]


def to_batch_first(x: Tensor, batch_first: bool) -> Tensor:
    return x if batch_first else x.transpose(0, 1)


def from_batch_first(x: Tensor, batch_first: bool) -> Tensor:
    return x if batch_first else x.transpose(0, 1)


def replace_hidden(args: tuple, kwargs: dict, new: Tensor) -> Tuple[tuple, dict]:
    """Swap the hidden states (first positional or known keyword) of a block call."""
    if args:
        return (new,) + tuple(args[1:]), kwargs
    for key in ("hidden_states", "q_x", "x"):
        if key in kwargs:
            kwargs = dict(kwargs)
            kwargs[key] = new
            return args, kwargs
    raise RuntimeError(
        "could not find the hidden states in a transformer block call "
        f"(kwargs: {sorted(kwargs)}); this backbone version is not supported by prompts."
    )


def hidden_of(args: tuple, kwargs: dict) -> Tensor:
    if args:
        return args[0]
    for key in ("hidden_states", "q_x", "x"):
        if key in kwargs:
            return kwargs[key]
    raise RuntimeError(
        "could not find the hidden states in a transformer block call "
        f"(kwargs: {sorted(kwargs)}); this backbone version is not supported by prompts."
    )


def resolve_layers(backbone: VisionLanguageBackbone, tower: str, layers) -> List[int]:
    """Validate a layer selection (None = all blocks; negative indices allowed)."""
    n = len(backbone.blocks(tower))
    if layers is None:
        return list(range(n))
    out = []
    for i in layers:
        j = int(i)
        if j < 0:
            j += n
        if not 0 <= j < n:
            raise ValueError(
                f"layer {i} is out of range for the {tower} tower of {backbone.name} ({n} blocks)."
            )
        out.append(j)
    return sorted(set(out))


__all__ = [
    "BackboneAttachment",
    "HookRecord",
    "resolve_layers",
    "replace_hidden",
    "hidden_of",
    "seq_first_token",
    "to_batch_first",
    "from_batch_first",
]
