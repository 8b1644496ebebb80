"""LwF-VR: LwF against a random vocabulary (ZSCL's baseline, Zheng et al., ICCV 2023).

ZSCL's "LwF-VR" baseline (``mtil/scripts/lwf_vr.sh``: ``--method ZSCL --image_loss
--text_loss --ref-dataset <current dataset> --ref-sentences random --ref-model
<previous task>``) is CLIP LwF (:mod:`avalanche_mm.strategies.clip_lwf`, mode
``"zscl"``) whose sentences are not the task's class prompts but a *virtual
vocabulary* (``virtual_vocab`` in ``mtil/src/models/helpers.py``): ``n_sentences``
(1000) token sequences ``[SOT, w_1 .. w_length, EOT, pad ...]`` with ``length``
(10) token ids drawn uniformly from the tokenizer's vocabulary. The teacher
(the model at the task's start) encodes them once per task; each iteration a
separate batch of the current task (evaluation preprocessing) is distilled in
both directions against them with temperature ``T``.

The released code draws the sentences with the process's global RNG after
``seed_all(seed)``, so every task of a run sees the same sentences; here they
come from ``torch.Generator().manual_seed(seed)`` (the same sentences for every
task too, not the same ids as the released run).
"""

from __future__ import annotations

from typing import Annotated, Optional, Sequence

import torch
from torch import Tensor

from avalanche_mm.registry import Range

from .clip_lwf import CLIPLwFPlugin
from .finetune import FineTune
from .registry import BuildContext, register_method


def virtual_vocabulary(backbone, *, n_sentences: int = 1000, length: int = 10, seed: int = 0) -> Tensor:
    """``[n_sentences, context_length]`` token ids: SOT, ``length`` uniform token ids, EOT, padding.

    :param backbone: a :class:`~avalanche_mm.models.VisionLanguageBackbone` (vocabulary
        size, special ids and context length come from it).
    """
    vocab = int(backbone.text_token_embedding.num_embeddings)
    ctx = int(backbone.context_length)
    if length + 2 > ctx:
        raise ValueError(
            f"virtual_vocabulary: {length} random tokens + SOT + EOT exceed the context length {ctx}; "
            "lower length."
        )
    g = torch.Generator().manual_seed(int(seed))
    words = torch.randint(0, vocab, (n_sentences, length), generator=g)
    out = torch.full((n_sentences, ctx), int(backbone.pad_token_id), dtype=torch.long)
    out[:, 0] = int(backbone.sot_token_id)
    out[:, 1 : length + 1] = words
    out[:, length + 1] = int(backbone.eot_token_id)
    return out


class LwFVRPlugin(CLIPLwFPlugin):
    """CLIP LwF against a virtual vocabulary of random sentences (see the module docstring).

    :param n_sentences: random sentences (1000 in the released code).
    :param length: random tokens per sentence (10).
    :param kwargs: the arguments of :class:`~avalanche_mm.strategies.CLIPLwFPlugin`
        (``mode`` is always ``"zscl"``).
    """

    def __init__(self, *, n_sentences: int = 1000, length: int = 10, **kwargs):
        kwargs["mode"] = "zscl"
        super().__init__(**kwargs)
        for name, v in (("n_sentences", n_sentences), ("length", length)):
            if isinstance(v, bool) or int(v) < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}.")
        self.n_sentences = int(n_sentences)
        self.length = int(length)

    def reference_tokens(self, strategy) -> Tensor:
        self.prompts = []
        return virtual_vocabulary(self.teacher, n_sentences=self.n_sentences, length=self.length, seed=self.seed)


class LwFVR(FineTune):
    """Continual fine-tuning with LwF-VR distillation (ZSCL's baseline).

    :param alpha: distillation weight.
    :param temperature: distillation temperature (2 in the released scripts).
    :param both_directions: also distil the transposed logits (``--text_loss``).
    :param n_sentences: random sentences of the virtual vocabulary.
    :param length: random tokens per sentence.
    :param ref_batch_size: samples of the separate batch (default: the training batch size).
    :param base_kwargs: the arguments of :class:`~avalanche_mm.strategies.FineTune`.
    """

    def __init__(
        self,
        *,
        alpha: Annotated[float, Range(ge=0.0)] = 1.0,
        temperature: Annotated[float, Range(gt=0.0)] = 2.0,
        both_directions: bool = True,
        n_sentences: Annotated[int, Range(ge=1)] = 1000,
        length: Annotated[int, Range(ge=1)] = 10,
        ref_batch_size: Optional[Annotated[int, Range(ge=1)]] = None,
        seed: int = 0,
        plugins: Optional[Sequence] = None,
        **base_kwargs,
    ):
        self.lwf_plugin = LwFVRPlugin(alpha=alpha, temperature=temperature, both_directions=both_directions,
                                      n_sentences=n_sentences, length=length, ref_batch_size=ref_batch_size,
                                      seed=seed)
        super().__init__(plugins=list(plugins or []) + [self.lwf_plugin], **base_kwargs)


@register_method("lwf-vr", summary="LwF-VR: LwF of the task-start model against a random virtual vocabulary (ZSCL baseline)",
                 params_from=LwFVR, model_kinds=("clip",), family="regularization",
                 reference="Ding et al., 2022; as run by Zheng et al., ICCV 2023", distributed=True)
def _build_lwf_vr(ctx: BuildContext, params: dict):
    return LwFVR(**ctx.common_kwargs(LwFVR), **params)


__all__ = ["virtual_vocabulary", "LwFVRPlugin", "LwFVR"]
