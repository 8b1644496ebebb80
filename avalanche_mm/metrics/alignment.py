"""Cross-modal alignment and drift of vision-language models on a fixed probe set of pairs."""

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue

from avalanche_mm.data.batch import to_device
from avalanche_mm.metrics._utils import (
    TrainingProgress,
    current_stream_name,
    eval_mode,
    make_value,
    unwrap_model,
)
from avalanche_mm.metrics.functional.alignment import (
    alignment_summary,
    representation_drift,
    retrieval_recall,
)

if TYPE_CHECKING:
    from avalanche.training.templates import SupervisedTemplate

#: logged base name of each key of :func:`alignment_summary` / :func:`representation_drift`
#: (recall keys ``i2t_R@k`` / ``t2i_R@k`` become ``Retrieval_i2t_Rk`` / ``Retrieval_t2i_Rk``:
#: no ``@`` in logged names, which end up in file names and TensorBoard tags).
LOGGED_NAMES = {
    "mean_recall": "Retrieval_MeanRecall",
    "positive_cosine": "Align_PositiveCosine",
    "modality_gap": "Align_ModalityGap",
    "alignment": "Align_AlignmentLoss",
    "uniformity_image": "Align_Uniformity_image",
    "uniformity_text": "Align_Uniformity_text",
    "modx_kl": "Drift_ModXKL",
    "modx_kl_i2t": "Drift_ModXKL_i2t",
    "modx_kl_t2i": "Drift_ModXKL_t2i",
    "argmax_consistency": "Drift_ArgmaxConsistency",
    "argmax_consistency_i2t": "Drift_ArgmaxConsistency_i2t",
    "argmax_consistency_t2i": "Drift_ArgmaxConsistency_t2i",
    "rotation_image": "Drift_Rotation_image",
    "rotation_text": "Drift_Rotation_text",
    "inter_modal_deviation": "Drift_InterModalDeviation",
}


def _logged_name(key: str) -> str:
    if key.startswith("i2t_R@") or key.startswith("t2i_R@"):
        return f"Retrieval_{key.replace('@', '')}"
    return LOGGED_NAMES[key]


class ProbeSet:
    """A fixed set of (image, text) pairs used to probe a vision-language model.

    Give either tensors (``images`` ``[N, C, H, W]`` and ``texts`` ``[N, L]`` token ids) or a
    pair ``dataset`` whose samples' ``x`` holds ``image_key`` and ``text_key`` (e.g.
    :func:`avalanche_mm.data.make_pair_dataset`; its collate is used). Pairs are one-to-one
    unless ``text_to_image`` gives the image index of each text (tensor input only).
    """

    def __init__(
        self,
        images: Optional[Tensor] = None,
        texts: Optional[Tensor] = None,
        *,
        dataset=None,
        text_to_image: Optional[Sequence[int]] = None,
        batch_size: int = 64,
        image_key: str = "image",
        text_key: str = "text",
    ):
        """
        :param images: ``[N, C, H, W]`` preprocessed images.
        :param texts: ``[N_t, L]`` token ids.
        :param dataset: alternatively, a pair dataset (one text per image).
        :param text_to_image: optional image index of each text (with tensors).
        :param batch_size: encoding batch size.
        :param image_key: modality name of images in ``dataset`` samples.
        :param text_key: modality name of texts in ``dataset`` samples.
        """
        if (dataset is None) == (images is None or texts is None):
            raise ValueError(
                "ProbeSet needs either images and texts tensors or a pair dataset (not both, "
                f"not neither); got images={type(images).__name__}, "
                f"texts={type(texts).__name__}, dataset={type(dataset).__name__}"
            )
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if dataset is not None and text_to_image is not None:
            raise ValueError(
                "text_to_image is supported with images/texts tensors; a pair dataset is "
                "one-to-one"
            )
        if dataset is not None and len(dataset) < 2:
            raise ValueError(f"a probe set needs at least 2 pairs; the dataset has {len(dataset)}")
        if images is not None:
            if not isinstance(images, Tensor) or not isinstance(texts, Tensor):
                raise TypeError(
                    f"images and texts must be tensors; got {type(images).__name__} and "
                    f"{type(texts).__name__}"
                )
            if images.shape[0] < 2:
                raise ValueError(f"a probe set needs at least 2 images; got {images.shape[0]}")
            if text_to_image is None and images.shape[0] != texts.shape[0]:
                raise ValueError(
                    f"one-to-one pairs need as many texts as images; got {images.shape[0]} "
                    f"images and {texts.shape[0]} texts (pass text_to_image otherwise)"
                )
        self.images = images
        self.texts = texts
        self.dataset = dataset.eval() if dataset is not None and hasattr(dataset, "eval") else dataset
        self.text_to_image = (
            None if text_to_image is None else torch.as_tensor(text_to_image).long()
        )
        self.batch_size = int(batch_size)
        self.image_key = image_key
        self.text_key = text_key

    def _batches(self) -> List[Tuple[str, Any]]:
        if self.dataset is None:
            bs = self.batch_size
            out = [("image", self.images[i : i + bs]) for i in range(0, self.images.shape[0], bs)]
            out += [("text", self.texts[i : i + bs]) for i in range(0, self.texts.shape[0], bs)]
            return out
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=False,
            collate_fn=getattr(self.dataset, "collate_fn", None),
        )
        out = []
        for batch in loader:
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            for key, kind in ((self.image_key, "image"), (self.text_key, "text")):
                if not isinstance(x, dict) or key not in x:
                    raise KeyError(
                        f"probe dataset samples must have x[{key!r}]; got "
                        f"{list(x) if isinstance(x, dict) else type(x).__name__}. Set "
                        f"image_key/text_key."
                    )
                out.append((kind, x[key]))
        return out

    def embed(
        self,
        encode_image: Callable[[Tensor], Tensor],
        encode_text: Callable[[Tensor], Tensor],
        device,
    ) -> Tuple[Tensor, Tensor]:
        """Embeddings ``(images [N, D], texts [N_t, D])`` in float32 on the CPU."""
        feats: Dict[str, List[Tensor]] = {"image": [], "text": []}
        with torch.no_grad():
            for kind, data in self._batches():
                fn = encode_image if kind == "image" else encode_text
                emb = fn(to_device(data, device))
                if not isinstance(emb, Tensor) or emb.dim() != 2:
                    raise ValueError(
                        f"encode_{kind} must return [B, D] embeddings; got "
                        f"{tuple(emb.shape) if isinstance(emb, Tensor) else type(emb).__name__}"
                    )
                feats[kind].append(emb.detach().float().cpu())
        return torch.cat(feats["image"]), torch.cat(feats["text"])


def resolve_encoders(model: nn.Module) -> Tuple[Callable, Callable]:
    """``(encode_image, encode_text)`` of ``model`` or of ``model.backbone``.

    :raises AttributeError: when neither exposes both methods.
    """
    model = unwrap_model(model)
    for obj in (model, getattr(model, "backbone", None)):
        if obj is not None and callable(getattr(obj, "encode_image", None)) and callable(
            getattr(obj, "encode_text", None)
        ):
            return obj.encode_image, obj.encode_text
    raise AttributeError(
        f"cross-modal alignment metrics need encode_image(images) and encode_text(token_ids) "
        f"on the model or on model.backbone (avalanche_mm.models.VisionLanguageBackbone); "
        f"{type(model).__name__} has neither. Pass `encoder=` (an object with both methods) "
        f"or `encode_image=` / `encode_text=` callables."
    )


class CrossModalAlignment(PluginMetric[Dict[str, float]]):
    """Retrieval, embedding geometry and drift of a vision-language model on a probe set.

    At the end of each evaluation of ``stream_name`` it embeds the probe set with the current
    model (eval mode) and logs, with names ``<Base>/eval_phase/<probe_name>_probe``:

    - ``retrieval``: ``Retrieval_i2t_Rk``, ``Retrieval_t2i_Rk`` (k in ``ks``, e.g.
      ``Retrieval_i2t_R1``),
      ``Retrieval_MeanRecall``;
    - ``geometry``: ``Align_PositiveCosine``, ``Align_ModalityGap``, ``Align_AlignmentLoss``,
      ``Align_Uniformity_image``, ``Align_Uniformity_text``;
    - ``drift`` (from the second model version on): ``Drift_ModXKL`` (and ``_i2t``/``_t2i``),
      ``Drift_ArgmaxConsistency`` (and ``_i2t``/``_t2i``), ``Drift_Rotation_image``,
      ``Drift_Rotation_text``, ``Drift_InterModalDeviation``.

    A model version is the state after a number of training experiences. Drift compares the
    current version with the previous one; the previous version's probe embeddings are taken
    at the start of each training experience when no evaluation recorded them (one probe pass).

    Cost: one pass over the probe set per evaluation, independent of the test stream size.
    """

    def __init__(
        self,
        probe: ProbeSet,
        *,
        encoder: Any = None,
        encode_image: Optional[Callable] = None,
        encode_text: Optional[Callable] = None,
        retrieval: bool = True,
        geometry: bool = True,
        drift: bool = True,
        ks: Sequence[int] = (1, 5, 10),
        logit_scale: float = 100.0,
        probe_name: str = "probe",
        stream_name: Optional[str] = "test",
    ):
        """
        :param probe: the :class:`ProbeSet`.
        :param encoder: optional object with ``encode_image`` / ``encode_text`` (default: the
            strategy's model or ``model.backbone``).
        :param encode_image: optional callable(images) -> ``[B, D]`` (with ``encode_text``).
        :param encode_text: optional callable(token_ids) -> ``[B, D]``.
        :param retrieval: log recall@k.
        :param geometry: log positive cosine, modality gap, alignment and uniformity.
        :param drift: log drift between consecutive model versions.
        :param ks: recall cut-offs.
        :param logit_scale: inverse temperature of the Mod-X KL (CLIP: 100).
        :param probe_name: name of the probe set in the logged names.
        :param stream_name: compute after evaluations of this stream only (``None``: after
            every evaluation).
        """
        super().__init__()
        if not isinstance(probe, ProbeSet):
            raise TypeError(
                f"probe must be an avalanche_mm.metrics.ProbeSet; got {type(probe).__name__}"
            )
        if (encode_image is None) != (encode_text is None):
            raise ValueError("pass both encode_image and encode_text, or neither")
        if encoder is not None and encode_image is not None:
            raise ValueError("pass either encoder or encode_image/encode_text, not both")
        if encoder is not None and not (
            callable(getattr(encoder, "encode_image", None))
            and callable(getattr(encoder, "encode_text", None))
        ):
            raise TypeError(
                f"encoder must have encode_image and encode_text methods; got "
                f"{type(encoder).__name__}"
            )
        if not (retrieval or geometry or drift):
            raise ValueError("enable at least one of retrieval, geometry, drift")
        if not isinstance(probe_name, str) or not probe_name or "/" in probe_name:
            raise ValueError(f"probe_name must be a non-empty string without '/'; got {probe_name!r}")
        self.probe = probe
        self.encoder = encoder
        self._encode_image = encode_image
        self._encode_text = encode_text
        self.retrieval = retrieval
        self.geometry = geometry
        self.drift = drift
        self.ks = tuple(int(k) for k in ks)
        if not self.ks or any(k < 1 for k in self.ks):
            raise ValueError(f"ks must be positive integers; got {list(ks)}")
        self.logit_scale = float(logit_scale)
        self.probe_name = probe_name
        self.stream_name = stream_name
        self.reset()

    def reset(self) -> None:
        """Forget the stored probe embeddings and results."""
        self._progress = TrainingProgress()
        self._versions: Dict[int, Tuple[Tensor, Tensor]] = {}
        self._last: Dict[str, float] = {}
        self.probe_passes = 0

    def result(self) -> Dict[str, float]:
        """The values logged at the last evaluation (functional key -> value)."""
        return dict(self._last)

    def _encoders(self, strategy) -> Tuple[Callable, Callable]:
        if self._encode_image is not None:
            return self._encode_image, self._encode_text
        if self.encoder is not None:
            return self.encoder.encode_image, self.encoder.encode_text
        return resolve_encoders(strategy.model)

    def embed(self, strategy: "SupervisedTemplate") -> Tuple[Tensor, Tensor]:
        """Probe embeddings under the current model (eval mode, no grad)."""
        enc_i, enc_t = self._encoders(strategy)
        with eval_mode(strategy.model):
            out = self.probe.embed(enc_i, enc_t, strategy.device)
        self.probe_passes += 1
        return out

    def _store(self, version: int, emb: Tuple[Tensor, Tensor]) -> None:
        self._versions[version] = emb
        for old in sorted(self._versions)[:-2]:
            del self._versions[old]

    def before_training_exp(self, strategy: "SupervisedTemplate") -> None:
        version = self._progress.started
        if self.drift and version not in self._versions:
            self._store(version, self.embed(strategy))
        self._progress.on_before_training_exp()

    def after_eval(self, strategy: "SupervisedTemplate") -> Optional[List[MetricValue]]:
        if self.stream_name is not None and current_stream_name(strategy) != self.stream_name:
            return None
        version = self._progress.started
        image, text = self.embed(strategy)
        t2i = self.probe.text_to_image
        values: Dict[str, float] = {}
        if self.geometry:
            values.update(alignment_summary(image, text, ks=self.ks, text_to_image=t2i))
            if not self.retrieval:
                for key in list(values):
                    if key.startswith(("i2t_R@", "t2i_R@")) or key == "mean_recall":
                        del values[key]
        elif self.retrieval:
            values.update(retrieval_recall(image, text, ks=self.ks, text_to_image=t2i))
        if self.drift:
            older = [v for v in self._versions if v < version]
            if older:
                old_image, old_text = self._versions[max(older)]
                values.update(
                    representation_drift(
                        old_image, old_text, image, text, logit_scale=self.logit_scale
                    )
                )
            self._store(version, (image, text))
        self._last = values
        return [
            make_value(
                self, f"{_logged_name(k)}/eval_phase/{self.probe_name}_probe", float(v), strategy
            )
            for k, v in values.items()
        ] or None

    def __str__(self) -> str:
        return "CrossModalAlignment"


__all__ = ["ProbeSet", "CrossModalAlignment", "resolve_encoders", "LOGGED_NAMES"]
