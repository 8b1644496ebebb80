"""Metrics the main job adds on top of :mod:`avalanche_mm.metrics`.

:class:`DriftFromInitial` measures how far a vision-language model's probe
embeddings have moved from the *pretrained* model (the quantity ZSCL tries to
keep small), where :class:`~avalanche_mm.metrics.CrossModalAlignment`
compares consecutive versions.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from torch import Tensor

from avalanche_mm.metrics.alignment import ProbeSet, resolve_encoders
from avalanche_mm.metrics._utils import current_stream_name, eval_mode, make_value
from avalanche_mm.metrics.functional.alignment import positive_pair_cosine, representation_drift


class DriftFromInitial(PluginMetric[Dict[str, float]]):
    """Representation drift of the probe set from the model before any training.

    The probe embeddings are taken once, before the first training experience,
    and after every evaluation of ``stream_name`` it logs
    ``DriftFromInit_<key>/eval_phase/<probe_name>_probe`` for the keys of
    :func:`~avalanche_mm.metrics.functional.alignment.representation_drift`
    (Mod-X KL, argmax consistency, intra-modal rotations, inter-modal
    deviation) and ``DriftFromInit_PositiveCosineChange`` (change of the
    matched-pair cosine).

    :param probe: the probe set of (image, text) pairs.
    :param logit_scale: inverse temperature of the KL terms.
    :param probe_name: name of the probe in the logged names.
    :param stream_name: the evaluation stream after which it runs.
    """

    def __init__(self, probe: ProbeSet, *, logit_scale: float = 100.0, probe_name: str = "probe", stream_name: str = "test"):
        super().__init__()
        if not isinstance(probe, ProbeSet):
            raise TypeError(f"probe must be an avalanche_mm.metrics.ProbeSet, got {type(probe).__name__}.")
        self.probe = probe
        self.logit_scale = float(logit_scale)
        self.probe_name = probe_name
        self.stream_name = stream_name
        self.reset()

    def reset(self) -> None:
        self.initial: Optional[Tuple[Tensor, Tensor]] = None
        self._last: Dict[str, float] = {}

    def result(self) -> Dict[str, float]:
        return dict(self._last)

    def _embed(self, strategy) -> Tuple[Tensor, Tensor]:
        enc_i, enc_t = resolve_encoders(strategy.model)
        with eval_mode(strategy.model):
            return self.probe.embed(enc_i, enc_t, strategy.device)

    def before_training(self, strategy) -> None:
        if self.initial is None:
            self.initial = self._embed(strategy)

    def after_eval(self, strategy) -> Optional[List[MetricValue]]:
        if self.initial is None or current_stream_name(strategy) != self.stream_name:
            return None
        image, text = self._embed(strategy)
        old_i, old_t = self.initial
        values = representation_drift(old_i, old_t, image, text, logit_scale=self.logit_scale)
        values["PositiveCosineChange"] = positive_pair_cosine(image, text) - positive_pair_cosine(old_i, old_t)
        self._last = values
        return [
            make_value(self, f"DriftFromInit_{k}/eval_phase/{self.probe_name}_probe", float(v), strategy)
            for k, v in values.items()
        ]

    def __str__(self) -> str:
        return "DriftFromInitial"


__all__ = ["DriftFromInitial"]
