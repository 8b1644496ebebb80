"""Mixed precision (bf16 autocast) and TF32 matmuls as an Avalanche plugin.

:class:`MixedPrecisionPlugin` runs each training forward pass and its loss, and
each evaluation forward pass, under ``torch.autocast`` with bfloat16 on the
strategy's device. bfloat16 keeps float32's exponent range, so no loss scaling
is needed (float16 would need a ``GradScaler``; it is not offered). Weights,
gradients and optimizer states stay float32. Losses that plugins add after
the criterion (distillation terms) run in float32.

On CUDA devices that support it, ``tf32=True`` also lets float32 matmuls and
convolutions use TensorFloat-32 (``torch.backends.cuda.matmul.allow_tf32``).
"""

from __future__ import annotations

import contextlib
from typing import Literal, Optional

import torch
from avalanche.core import SupervisedPlugin


def bf16_supported(device: torch.device) -> bool:
    """Whether autocast to bfloat16 works on ``device`` (CPU: always; CUDA: compute capability >= 8)."""
    device = torch.device(device)
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return False


def enable_tf32(device: torch.device) -> bool:
    """Allow TF32 matmuls/convolutions on an Ampere-or-newer CUDA device; return whether it was enabled."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if torch.cuda.get_device_capability(idx)[0] < 8:
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


class MixedPrecisionPlugin(SupervisedPlugin, supports_distributed=True):
    """bf16 autocast around forward + loss (training) and forward (evaluation).

    :param precision: ``"bf16"`` (autocast to bfloat16) or ``"fp32"`` (no-op).
    :param tf32: on CUDA, allow TF32 for float32 matmuls (Ampere or newer).
    """

    def __init__(self, *, precision: Literal["fp32", "bf16"] = "bf16", tf32: bool = True):
        super().__init__()
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"MixedPrecisionPlugin: precision must be 'fp32' or 'bf16', got {precision!r}")
        self.precision = precision
        self.tf32 = bool(tf32)
        self._ctx: Optional[contextlib.AbstractContextManager] = None
        self._checked = False

    def _enter(self, strategy) -> None:
        if self.precision == "fp32":
            return
        device = torch.device(strategy.device)
        if not self._checked:
            if not bf16_supported(device):
                raise RuntimeError(
                    f"MixedPrecisionPlugin: bf16 autocast is not supported on {device} "
                    "(CUDA needs compute capability 8.0 or newer); use precision 'fp32'"
                )
            if self.tf32:
                enable_tf32(device)
            self._checked = True
        self._exit()
        self._ctx = torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        self._ctx.__enter__()

    def _exit(self) -> None:
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            ctx.__exit__(None, None, None)

    # training: forward and criterion under autocast, backward outside
    def before_forward(self, strategy, **kwargs):
        self._enter(strategy)

    def before_backward(self, strategy, **kwargs):
        self._exit()

    def after_training_iteration(self, strategy, **kwargs):
        self._exit()  # safety: never leak the context past an iteration

    # evaluation
    def before_eval_forward(self, strategy, **kwargs):
        self._enter(strategy)

    def after_eval_forward(self, strategy, **kwargs):
        self._exit()


__all__ = ["MixedPrecisionPlugin", "bf16_supported", "enable_tf32"]
