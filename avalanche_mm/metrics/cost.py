"""Cost plugin metrics: parameters per experience and their growth, training time,
throughput and peak memory."""

import resource
import sys
import time
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple

import torch

from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue

from avalanche_mm.data.batch import batch_size as _batch_size
from avalanche_mm.metrics._utils import exp_metric_name, make_value, unwrap_model
from avalanche_mm.metrics.functional.cost import count_parameters, throughput

if TYPE_CHECKING:
    from avalanche.training.templates import SupervisedTemplate


class ParameterCount(PluginMetric[Dict[str, float]]):
    """Trainable and total parameters per training experience, and their growth.

    Trainable parameters (``requires_grad``) are counted at the start of each training
    experience (after the strategy's model adaptation and optimizer setup), total parameters at
    its end. Logged at the end of each training experience
    (``<Base>/train_phase/<stream>_stream/TaskNNN/ExpNNN``):

    - ``Params_Trainable_Exp``, ``Params_Total_Exp``;
    - ``Params_TotalGrowth_Exp``: total now / total after the first experience;
    - ``Params_TrainableCumulative_Exp``: sum of trainable counts over the experiences so far
      (parameters a method has had to update along the stream).

    Cost: negligible (walks the parameter list twice per experience).

    :param counter: optional ``model -> (trainable, total)`` replacing the
        ``requires_grad`` count, for methods whose trainable share is finer
        than a parameter tensor (e.g. one task's row of a stacked router
        tensor in MoE-Adapters, plus modules kept outside the model). Without
        it, a strategy plugin with a ``parameter_counts(model)`` method is used
        when there is one (the method declares its own share), else ``requires_grad``.
    """

    def __init__(self, counter: Optional[Callable[[torch.nn.Module], Tuple[int, int]]] = None) -> None:
        super().__init__()
        if counter is not None and not callable(counter):
            raise TypeError(f"ParameterCount: counter must be callable or None, got {type(counter).__name__}.")
        self.counter = counter
        self.reset()

    def _count(self, strategy) -> Tuple[int, int]:
        model = unwrap_model(strategy.model)
        counter = self.counter
        if counter is None:  # a method plugin that knows its trainable share (MoE-Adapters) says it
            counter = next((p.parameter_counts for p in getattr(strategy, "plugins", ()) if callable(getattr(p, "parameter_counts", None))), None)
        if counter is not None:
            trainable, total = counter(model)
            return int(trainable), int(total)
        return count_parameters(model)

    def reset(self) -> None:
        self.trainable: List[int] = []
        self.total: List[int] = []
        self._pending_trainable: Optional[int] = None

    def result(self) -> Dict[str, float]:
        """``{"trainable", "total", "total_growth", "trainable_cumulative"}`` for the last
        experience (empty before the first one ends)."""
        if not self.total:
            return {}
        return {
            "trainable": float(self.trainable[-1]),
            "total": float(self.total[-1]),
            "total_growth": self.total[-1] / self.total[0],
            "trainable_cumulative": float(sum(self.trainable)),
        }

    def state_dict(self) -> Dict[str, List[int]]:
        """The counts so far (the ``counter`` callable is not state)."""
        return {"trainable": list(self.trainable), "total": list(self.total)}

    def load_state_dict(self, state: Dict[str, List[int]]) -> None:
        self.trainable = [int(v) for v in state.get("trainable", [])]
        self.total = [int(v) for v in state.get("total", [])]
        self._pending_trainable = None

    def before_training_exp(self, strategy: "SupervisedTemplate") -> None:
        self._pending_trainable = self._count(strategy)[0]

    def after_training_exp(self, strategy: "SupervisedTemplate") -> List[MetricValue]:
        trainable_end, total = self._count(strategy)
        trainable = self._pending_trainable if self._pending_trainable is not None else trainable_end
        self._pending_trainable = None
        self.trainable.append(int(trainable))
        self.total.append(int(total))
        res = self.result()
        names = {
            "trainable": "Params_Trainable_Exp",
            "total": "Params_Total_Exp",
            "total_growth": "Params_TotalGrowth_Exp",
            "trainable_cumulative": "Params_TrainableCumulative_Exp",
        }
        return [
            make_value(self, exp_metric_name(names[k], strategy), v, strategy)
            for k, v in res.items()
        ]

    def __str__(self) -> str:
        return "Params"


class TrainingTime(PluginMetric[Dict[str, float]]):
    """Wall-clock training time and throughput per training experience.

    Time runs from the start to the end of each training experience, minus the time spent in
    evaluations that happen inside it (periodic evaluation). Logged at the end of each
    experience: ``TrainTime_Exp`` (seconds), ``TrainThroughput_Exp`` (training samples per
    second, all epochs) and ``TrainTime_Cumulative_Exp`` (seconds since the first experience).

    On CUDA the device is synchronised before reading the clock, so that queued kernels are
    counted. Cost: negligible.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self.seconds: List[float] = []
        self.samples: List[int] = []
        self._start: Optional[float] = None
        self._eval_start: Optional[float] = None
        self._eval_seconds = 0.0
        self._n = 0

    def result(self) -> Dict[str, float]:
        """``{"seconds", "throughput", "cumulative_seconds"}`` of the last experience."""
        if not self.seconds:
            return {}
        sec = self.seconds[-1]
        return {
            "seconds": sec,
            "throughput": throughput(self.samples[-1], sec) if sec > 0 else float("nan"),
            "cumulative_seconds": float(sum(self.seconds)),
        }

    @staticmethod
    def _now(strategy) -> float:
        device = torch.device(getattr(strategy, "device", "cpu"))
        if device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def before_training_exp(self, strategy: "SupervisedTemplate") -> None:
        self._start = self._now(strategy)
        self._eval_seconds = 0.0
        self._n = 0

    def after_training_iteration(self, strategy: "SupervisedTemplate") -> None:
        self._n += int(_batch_size(strategy.mb_y))

    def before_eval(self, strategy: "SupervisedTemplate") -> None:
        if self._start is not None:
            self._eval_start = self._now(strategy)

    def after_eval(self, strategy: "SupervisedTemplate") -> None:
        if self._eval_start is not None:
            self._eval_seconds += self._now(strategy) - self._eval_start
            self._eval_start = None

    def after_training_exp(self, strategy: "SupervisedTemplate") -> Optional[List[MetricValue]]:
        if self._start is None:
            return None
        sec = self._now(strategy) - self._start - self._eval_seconds
        self._start = None
        self.seconds.append(sec)
        self.samples.append(self._n)
        names = {
            "seconds": "TrainTime_Exp",
            "throughput": "TrainThroughput_Exp",
            "cumulative_seconds": "TrainTime_Cumulative_Exp",
        }
        return [
            make_value(self, exp_metric_name(names[k], strategy), v, strategy)
            for k, v in self.result().items()
        ]

    def __str__(self) -> str:
        return "TrainTime"


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


class PeakMemory(PluginMetric[Dict[str, float]]):
    """Peak memory during each training experience.

    Logged at the end of each training experience:

    - ``PeakGPUMem_MB_Exp``: peak CUDA memory allocated by tensors during the experience
      (``torch.cuda.max_memory_allocated``, reset at its start); only on a CUDA device;
    - ``PeakRSS_MB_Exp``: the process's peak resident set size so far (``getrusage``); the OS
      cannot reset it, so it is the peak since the process started, not per experience.

    Cost: negligible.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self.gpu_mb: List[float] = []
        self.rss_mb: List[float] = []

    def result(self) -> Dict[str, float]:
        """``{"gpu_mb", "rss_mb"}`` of the last experience (``gpu_mb`` only on CUDA)."""
        out = {}
        if self.gpu_mb:
            out["gpu_mb"] = self.gpu_mb[-1]
        if self.rss_mb:
            out["rss_mb"] = self.rss_mb[-1]
        return out

    @staticmethod
    def _cuda_device(strategy):
        device = torch.device(getattr(strategy, "device", "cpu"))
        if device.type == "cuda" and torch.cuda.is_available():
            return device
        return None

    def before_training_exp(self, strategy: "SupervisedTemplate") -> None:
        device = self._cuda_device(strategy)
        if device is not None:
            torch.cuda.reset_peak_memory_stats(device)

    def after_training_exp(self, strategy: "SupervisedTemplate") -> List[MetricValue]:
        out = []
        device = self._cuda_device(strategy)
        if device is not None:
            mb = torch.cuda.max_memory_allocated(device) / (1024.0 * 1024.0)
            self.gpu_mb.append(mb)
            out.append(make_value(self, exp_metric_name("PeakGPUMem_MB_Exp", strategy), mb, strategy))
        rss = _peak_rss_mb()
        self.rss_mb.append(rss)
        out.append(make_value(self, exp_metric_name("PeakRSS_MB_Exp", strategy), rss, strategy))
        return out

    def __str__(self) -> str:
        return "PeakMemory"


def cost_metrics(
    *, parameters: bool = True, time: bool = True, memory: bool = True
) -> List[PluginMetric]:
    """The cost metrics as a list for ``EvaluationPlugin``.

    :param parameters: add :class:`ParameterCount`.
    :param time: add :class:`TrainingTime`.
    :param memory: add :class:`PeakMemory`.
    """
    out: List[PluginMetric] = []
    if parameters:
        out.append(ParameterCount())
    if time:
        out.append(TrainingTime())
    if memory:
        out.append(PeakMemory())
    if not out:
        raise ValueError("cost_metrics: every metric is disabled; enable one")
    return out


__all__ = ["ParameterCount", "TrainingTime", "PeakMemory", "cost_metrics"]
