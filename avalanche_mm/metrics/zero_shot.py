"""Zero-shot retention: accuracy on a held-out control set that is never trained on."""

from typing import TYPE_CHECKING, Callable, Dict, List, Optional

import torch
from torch.utils.data import DataLoader

from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.models.utils import avalanche_forward

from avalanche_mm.data.batch import to_device
from avalanche_mm.metrics._utils import eval_mode, make_value
from avalanche_mm.metrics.functional.imbalance import correct_predictions

if TYPE_CHECKING:
    from avalanche.training.templates import SupervisedTemplate


class ZeroShotRetention(PluginMetric[Dict[str, float]]):
    """Accuracy on a held-out control set before training and after every training experience.

    The control set (e.g. classes or datasets the stream never trains on, scored zero-shot) is
    evaluated once before training (``acc_0``) and after each training experience ``t``
    (``acc_t``). Logged values (``<name>`` is the ``name`` argument):

    - ``ZeroShot_ControlAcc/<name>``: ``acc_0`` at ``before_training`` (once), then ``acc_t``;
    - ``ZeroShot_Retention/<name>``: ``acc_t / acc_0`` (1 = nothing lost);
    - ``ZeroShot_Drop/<name>``: ``acc_0 - acc_t``.

    Cost: one pass over the control set per training experience (plus one before training).

    The model must score the control set's targets: pass ``forward`` when its logits need
    special handling (e.g. a zero-shot head over the control classes).
    """

    def __init__(
        self,
        control_set,
        *,
        name: str = "control",
        batch_size: int = 64,
        num_workers: int = 0,
        forward: Optional[Callable] = None,
    ):
        """
        :param control_set: an Avalanche/PyTorch dataset of ``(x, y, ...)`` samples; its
            ``collate_fn`` (if any) is used, and its ``eval()`` view when available.
        :param name: a short name for the control set, used in the logged names.
        :param batch_size: batch size of the control-set passes.
        :param num_workers: DataLoader workers.
        :param forward: optional ``forward(model, x) -> logits [B, C]``; default: Avalanche's
            ``avalanche_forward(model, x, task_labels)``.
        """
        super().__init__()
        if control_set is None or not hasattr(control_set, "__len__") or len(control_set) == 0:
            raise ValueError(
                "control_set must be a non-empty dataset of (x, y, t) samples that the stream "
                f"never trains on; got {control_set!r}"
            )
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"name must be a non-empty string without '/'; got {name!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if forward is not None and not callable(forward):
            raise TypeError(f"forward must be callable(model, x) -> logits; got {forward!r}")
        self.control_set = control_set.eval() if hasattr(control_set, "eval") else control_set
        self.name = name
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.forward = forward
        self.reset()

    def reset(self) -> None:
        """Forget the initial and per-experience accuracies."""
        self.initial: Optional[float] = None
        self.history: List[float] = []

    def result(self) -> Dict[str, float]:
        """``{"initial": acc_0, "last": acc_t, "retention": acc_t / acc_0}`` (what is known)."""
        out: Dict[str, float] = {}
        if self.initial is not None:
            out["initial"] = self.initial
        if self.history:
            out["last"] = self.history[-1]
            if self.initial:
                out["retention"] = self.history[-1] / self.initial
        return out

    def evaluate(self, strategy: "SupervisedTemplate") -> float:
        """Accuracy of ``strategy.model`` on the control set (eval mode, no grad)."""
        loader = DataLoader(
            self.control_set,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=getattr(self.control_set, "collate_fn", None),
        )
        correct = 0
        total = 0
        model = strategy.model
        with eval_mode(model):
            for batch in loader:
                if not isinstance(batch, (list, tuple)) or len(batch) < 2:
                    raise ValueError(
                        "control_set batches must be (x, y[, task_labels]) sequences; got "
                        f"{type(batch).__name__}"
                    )
                x = to_device(batch[0], strategy.device)
                y = torch.as_tensor(batch[1]).to(strategy.device)
                t = (
                    torch.as_tensor(batch[2]).to(strategy.device)
                    if len(batch) > 2
                    else torch.zeros_like(y)
                )
                logits = self.forward(model, x) if self.forward else avalanche_forward(model, x, t)
                hits = correct_predictions(logits, y)
                correct += int(hits.sum())
                total += int(hits.numel())
        return correct / total

    def before_training(self, strategy: "SupervisedTemplate") -> Optional[List[MetricValue]]:
        if self.initial is not None:
            return None
        self.initial = self.evaluate(strategy)
        return [make_value(self, f"ZeroShot_ControlAcc/{self.name}", self.initial, strategy)]

    def after_training_exp(self, strategy: "SupervisedTemplate") -> List[MetricValue]:
        acc = self.evaluate(strategy)
        self.history.append(acc)
        values = [make_value(self, f"ZeroShot_ControlAcc/{self.name}", acc, strategy)]
        if self.initial is not None:
            values.append(make_value(self, f"ZeroShot_Drop/{self.name}", self.initial - acc, strategy))
            if self.initial > 0:
                values.append(
                    make_value(self, f"ZeroShot_Retention/{self.name}", acc / self.initial, strategy)
                )
        return values

    def __str__(self) -> str:
        return f"ZeroShot_{self.name}"


__all__ = ["ZeroShotRetention"]
