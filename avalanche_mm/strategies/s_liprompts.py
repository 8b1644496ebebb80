"""S-liPrompts (Wang et al., "S-Prompts Learning with Pre-trained Transformers: An Occam's
Razor for Domain Incremental Learning", NeurIPS 2022), the language-image variant on CLIP.

Per domain (= per training experience of a domain-incremental stream), with CLIP frozen:

1. **Prompts.** An image prompt of ``prompt_length`` tokens (10) inserted after the
   ``[CLS]`` token of the image transformer, and a CoOp text context of
   ``n_ctx`` tokens (16) in front of every class name (``"X ... X <class>."``);
   only the current domain's pair trains, with cross-entropy alone.
2. **Domain keys.** After training on a domain, K-means (``n_clusters`` = 5) on
   the frozen image features of the domain's training images gives the domain's
   centroids.
3. **Inference.** The domain whose nearest centroid is closest to the image's
   frozen feature is chosen; the image is encoded with that domain's image
   prompt and classified against the class embeddings of that domain's text
   context.

The domain-selection accuracy (the share of test images of a learned domain
that pick it; the test experience's index is its domain) is logged as
``DomainSelectionAcc_Stream`` and per experience as ``DomainSelectionAcc_Exp``.

Code vs paper (released code, ``methods/sprompt.py`` and ``models/slinet.py``):
- the distance to centroids is the sum of absolute differences
  (``((f - c) ** 2) ** 0.5).sum()``, L1) - the default ``distance="l1"``;
  ``"l2"`` is the Euclidean distance of the paper's wording;
- the image prompt is inserted after the positional embedding and before the
  pre-LayerNorm in the code; here it enters at the first block's input (after
  the pre-LayerNorm of open_clip), the place :class:`VisualPrompts` uses;
- the released ``SliNet.forward`` trains against the *last* text-prompt slot
  (``classifier_pool[-1]``) while marking the current domain's slot trainable; we
  train the current domain's text context (the paper's description);
- K-means runs on the training images with evaluation preprocessing
  (the code iterates the training loader); our K-means is k-means++ seeded
  Lloyd iterations (scikit-learn's ``KMeans(random_state=0)`` in the code).
Recipe of the code: SGD momentum 0.9, lr 0.01, weight decay 2e-4 (5e-4 on the
first domain), batch 128, 10 epochs per domain, cosine schedule.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Dict, List, Literal, Optional

import torch
import torch.nn.functional as F
from avalanche.evaluation.metric_results import MetricValue
from torch import Tensor, nn
from torch.utils.data import DataLoader

from avalanche_mm.models.attach.prompt_pool import VisionPromptInjector, frozen_image_query, images_of
from avalanche_mm.models.attach.prompts import TextContextPrompts
from avalanche_mm.registry import Range

from ._prompting import PromptMethodPlugin, PromptStrategy, backbone_sizes, frozen_backbone, method_problem, build_prompt_strategy
from .registry import BuildContext, CheckContext, register_method
from .template import resolve_collate


# ---------------------------------------------------------------------------
# K-means and nearest-centroid selection (pure functions)
# ---------------------------------------------------------------------------
def kmeans(features: Tensor, k: int, *, seed: int = 0, iterations: int = 100) -> Tensor:
    """``[k, D]`` centroids of ``features`` (``[N, D]``): k-means++ init, Lloyd iterations.

    :raises ValueError: when ``k < 1`` or ``k > N``.
    """
    x = features.detach().float()
    n = x.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"K-means: k must be in 1..{n} (the number of samples), got {k!r}.")
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    first = int(torch.randint(n, (1,), generator=g))
    centres = [x[first]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        probs = d2.clamp(min=0).cpu()
        if float(probs.sum()) <= 0:
            nxt = int(torch.randint(n, (1,), generator=g))
        else:
            nxt = int(torch.multinomial(probs / probs.sum(), 1, generator=g))
        centres.append(x[nxt])
        d2 = torch.minimum(d2, ((x - x[nxt]) ** 2).sum(1))
    c = torch.stack(centres)
    for _ in range(iterations):
        assign = torch.cdist(x, c).argmin(1)
        new = c.clone()
        for j in range(k):
            members = x[assign == j]
            if len(members):
                new[j] = members.mean(0)
        if torch.allclose(new, c):
            break
        c = new
    return c


def centroid_distances(query: Tensor, centroids: Tensor, distance: str = "l1") -> Tensor:
    """``[B, n_domains]``: per domain, the distance of each query to its nearest centroid.

    :param query: ``[B, D]``.
    :param centroids: ``[n_domains, K, D]``.
    :param distance: ``"l1"`` (released code) or ``"l2"``.
    """
    q = query.float().unsqueeze(1).unsqueeze(1)  # [B, 1, 1, D]
    diff = q - centroids.float().unsqueeze(0)  # [B, n, K, D]
    if distance == "l1":
        d = diff.abs().sum(-1)
    elif distance == "l2":
        d = diff.pow(2).sum(-1).sqrt()
    else:
        raise ValueError(f"distance must be 'l1' or 'l2', got {distance!r}.")
    return d.min(dim=2).values


def select_domain(query: Tensor, centroids: Tensor, distance: str = "l1") -> Tensor:
    """``[B]`` index of the domain with the nearest centroid."""
    return centroid_distances(query, centroids, distance).argmin(dim=1)


# ---------------------------------------------------------------------------
class SLiPromptBank(nn.Module):
    """Per-domain image prompts, text contexts and K-means centroids (lives on the backbone).

    :param n_domains: number of domains.
    :param prompt_length: image prompt tokens.
    :param vision_width: image token width.
    :param n_ctx: text context tokens.
    :param text_width: text token width.
    :param n_clusters: centroids per domain.
    :param feature_dim: image feature dimension.
    """

    towers = ("vision", "text")

    def __init__(self, *, n_domains: int, prompt_length: int, vision_width: int, n_ctx: int, text_width: int,
                 n_clusters: int, feature_dim: int, text_init: Optional[Tensor] = None):
        super().__init__()
        bound = 1.0 / math.sqrt(vision_width)  # nn.Linear(width, length).weight, as the released code
        self.image_prompts = nn.ParameterList(
            [nn.Parameter(torch.empty(prompt_length, vision_width).uniform_(-bound, bound)) for _ in range(n_domains)]
        )
        self.text_contexts = nn.ParameterList(
            [nn.Parameter(text_init.clone().float() if text_init is not None else torch.randn(n_ctx, text_width) * 0.02)
             for _ in range(n_domains)]
        )
        self.register_buffer("centroids", torch.zeros(n_domains, n_clusters, feature_dim))
        self.register_buffer("learned", torch.zeros((), dtype=torch.long))
        self.n_domains = n_domains

    def set_trainable(self, domain: Optional[int]) -> None:
        for d in range(self.n_domains):
            self.image_prompts[d].requires_grad_(d == domain)
            self.text_contexts[d].requires_grad_(d == domain)


class SLiPromptsPlugin(PromptMethodPlugin):
    """Per-domain prompts, K-means domain keys, nearest-centroid selection (module docstring).

    :param backbone: the frozen backbone.
    :param class_names: the class names (one label space shared by the domains).
    :param n_domains: number of domains (prompt pairs).
    :param prompt_length: image prompt tokens.
    :param n_ctx: text context tokens.
    :param n_clusters: K of K-means per domain.
    :param distance: ``"l1"`` (released code) or ``"l2"``.
    :param seed: K-means seed.
    :param text_init: None (random N(0, 0.02), the released code) or a phrase of exactly
        ``n_ctx`` tokens whose embeddings start every domain's context (CoOp's ``"a photo of a"``).
    :param image_key: batch key of the images.
    :param name: attachment name on the backbone.
    """

    def __init__(self, *, backbone, class_names, n_domains: int, prompt_length: int = 10, n_ctx: int = 16,
                 n_clusters: int = 5, distance: str = "l1", seed: int = 0, text_init: Optional[str] = None,
                 image_key: str = "image", name: str = "slip"):
        super().__init__(backbone=backbone, image_key=image_key)
        if distance not in ("l1", "l2"):
            raise ValueError(f"S-liPrompts: distance must be 'l1' or 'l2', got {distance!r}.")
        if isinstance(n_clusters, bool) or not isinstance(n_clusters, int) or n_clusters < 1:
            raise ValueError(f"S-liPrompts: n_clusters (K of K-means) must be an int >= 1, got {n_clusters!r}.")
        self.class_names = list(class_names)
        self.n_clusters = n_clusters
        self.distance = distance
        self.seed = int(seed)
        self.text = TextContextPrompts(backbone=backbone, n_ctx=n_ctx, init=text_init).to(backbone.device)
        self.text.ctx.requires_grad_(False)  # the per-domain contexts come from the bank
        self.bank = SLiPromptBank(n_domains=n_domains, prompt_length=prompt_length,
                                  vision_width=backbone.width("vision"), n_ctx=n_ctx,
                                  text_width=backbone.width("text"), n_clusters=n_clusters,
                                  feature_dim=backbone.embed_dim,
                                  text_init=self.text.ctx[0].detach() if text_init is not None else None)
        backbone.add_attachment(f"{name}_bank", self.bank.to(backbone.device))
        self.injector = VisionPromptInjector(backbone=backbone).attach(backbone, name=f"{name}_image")
        self.text.attach(backbone, name=f"{name}_text")
        self.bank.set_trainable(None)
        self._ids: Optional[Tensor] = None
        self._text_cache: Dict[int, Tensor] = {}
        self._sel_correct = 0
        self._sel_total = 0
        self.last_domains: Optional[Tensor] = None

    # -- pieces --------------------------------------------------------------
    def clear(self) -> None:
        self.injector.clear()

    def _token_ids(self) -> Tensor:
        if self._ids is None:
            self._ids = self.backbone.tokenize(self.text.prepare([f"{c}." for c in self.class_names]))
        return self._ids.to(self.backbone.device)

    def text_features(self, domain: int) -> Tensor:
        """``[C, E]`` class embeddings with ``domain``'s text context (cached outside training)."""
        train = torch.is_grad_enabled() and self.bank.text_contexts[domain].requires_grad
        if not train and domain in self._text_cache:
            return self._text_cache[domain]
        with self.text.context_override(self.bank.text_contexts[domain]):
            feats = self.backbone.encode_text(self._token_ids()).float()
        if not train:
            self._text_cache[domain] = feats.detach()
        return feats

    def image_features(self, images: Tensor, domain: int) -> Tensor:
        p = self.bank.image_prompts[domain]
        with self.injector.using(prepend=p.unsqueeze(0).expand(images.shape[0], -1, -1)):
            return self.backbone.encode_image(images).float()

    def select(self, query: Tensor) -> Tensor:
        n = int(self.bank.learned)
        if n == 0:
            return torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
        return select_domain(query, self.bank.centroids[:n], self.distance)

    def logits(self, strategy) -> Tensor:
        """The S-liPrompts logits of the current minibatch."""
        model = strategy.model
        images = images_of(strategy.mb_x, self.image_key)
        if strategy.is_training:
            domains = torch.full((images.shape[0],), int(strategy.experience.current_experience),
                                 dtype=torch.long, device=images.device)
        else:
            self.clear()
            domains = self.select(frozen_image_query(self.backbone, images, disable=False)).to(images.device)
        self.last_domains = domains
        scale = model.scale() if hasattr(model, "scale") else self.backbone.logit_scale_value()
        out = None
        for d in domains.unique().tolist():
            rows = (domains == d).nonzero(as_tuple=True)[0]
            z = scale * self.image_features(images[rows], d) @ self.text_features(d).t()
            if out is None:
                out = z.new_zeros(images.shape[0], z.shape[1])
            out = out.index_copy(0, rows, z)
        active = getattr(model, "active_classes", None)
        if active is not None:
            mask = torch.ones(out.shape[1], dtype=torch.bool, device=out.device)
            mask[active] = False
            out = out.masked_fill(mask, getattr(model, "mask_value", -1e4))
        return out

    # -- callbacks -----------------------------------------------------------
    def before_forward(self, strategy, **kwargs):
        return None

    def before_eval_forward(self, strategy, **kwargs):
        return None

    def before_backward(self, strategy, **kwargs):
        return None

    def on_training_experience(self, strategy, experience_index: int) -> None:
        if experience_index >= self.bank.n_domains:
            raise ValueError(
                f"S-liPrompts: experience {experience_index} but prompts exist for {self.bank.n_domains} "
                "domains (n_domains); set n_domains to the number of experiences."
            )
        self.bank.set_trainable(experience_index)
        self._text_cache.clear()

    def after_training_exp(self, strategy, **kwargs):
        d = int(strategy.experience.current_experience)
        self.bank.set_trainable(None)
        self._text_cache.clear()
        dataset = strategy.experience.dataset
        dataset = dataset.eval() if hasattr(dataset, "eval") else dataset
        loader = DataLoader(dataset, batch_size=strategy.eval_mb_size, shuffle=False,
                            collate_fn=resolve_collate(dataset, strategy))
        feats = []
        self.clear()
        for batch in loader:
            x = batch[0]
            images = images_of(x, self.image_key).to(self.backbone.device)
            feats.append(frozen_image_query(self.backbone, images, disable=False).cpu())
        feats = torch.cat(feats)
        if feats.shape[0] < self.n_clusters:
            raise ValueError(
                f"S-liPrompts: domain {d} has {feats.shape[0]} training images, fewer than n_clusters="
                f"{self.n_clusters} (K of K-means); lower n_clusters."
            )
        centres = kmeans(feats, self.n_clusters, seed=self.seed + d)
        with torch.no_grad():
            self.bank.centroids[d].copy_(centres.to(self.bank.centroids.device))
            self.bank.learned.fill_(max(int(self.bank.learned), d + 1))

    def before_eval(self, strategy, **kwargs):
        self._text_cache.clear()
        self._stream_correct = 0
        self._stream_total = 0

    def before_eval_exp(self, strategy, **kwargs):
        self._sel_correct = 0
        self._sel_total = 0

    def after_eval_iteration(self, strategy, **kwargs):
        true = int(strategy.experience.current_experience)
        if true < int(self.bank.learned) and self.last_domains is not None:
            # the domains were selected on this rank's rows: under sharded evaluation (several
            # processes) gather them into the global minibatch's (identity otherwise)
            gather = getattr(strategy, "gather_eval_rows", None)
            domains = gather(self.last_domains) if callable(gather) else self.last_domains
            self._sel_correct += int((domains == true).sum())
            self._sel_total += int(domains.numel())

    def after_eval_exp(self, strategy, **kwargs):
        if not self._sel_total:
            return
        exp = int(strategy.experience.current_experience)
        self._stream_correct = getattr(self, "_stream_correct", 0) + self._sel_correct
        self._stream_total = getattr(self, "_stream_total", 0) + self._sel_total
        evaluator = getattr(strategy, "evaluator", None)
        if evaluator is None or not hasattr(evaluator, "publish_metric_value"):
            return
        x = strategy.clock.train_iterations
        evaluator.publish_metric_value(MetricValue(
            self, f"DomainSelectionAcc_Exp/eval_phase/test_stream/Task000/Exp{exp:03d}",
            self._sel_correct / self._sel_total, x))
        evaluator.publish_metric_value(MetricValue(
            self, "DomainSelectionAcc_Stream/eval_phase/test_stream",
            self._stream_correct / self._stream_total, x))


class SLiPrompts(PromptStrategy):
    """S-liPrompts on a frozen CLIP (see the module docstring).

    :param model: a :class:`~avalanche_mm.models.ZeroShotClassifier` (one label space).
    :param optimizer: the optimizer.
    :param n_domains: number of domains; None: the benchmark's number of experiences.
    :param prompt_length: image prompt tokens per domain.
    :param n_ctx: text context tokens per domain.
    :param n_clusters: K of K-means (centroids per domain).
    :param distance: distance to centroids, ``l1`` (released code) or ``l2``.
    :param text_init: None (random, the released code) or a phrase of exactly n_ctx tokens
        initialising every domain's text context (e.g. "a photo of a" for n_ctx 4).
    :param image_key: batch key of the images.
    :param seed: K-means seed.
    :param base_kwargs: :class:`~avalanche_mm.strategies.FineTune` arguments.
    """

    def __init__(self, *, model, optimizer,
                 n_domains: Optional[Annotated[int, Range(ge=1)]] = None,
                 prompt_length: Annotated[int, Range(ge=1)] = 10,
                 n_ctx: Annotated[int, Range(ge=1)] = 16,
                 n_clusters: Annotated[int, Range(ge=1)] = 5,
                 distance: Literal["l1", "l2"] = "l1",
                 text_init: Optional[str] = None,
                 image_key: str = "image", seed: int = 0, **base_kwargs):
        if n_domains is None:
            raise ValueError("S-liPrompts: n_domains is needed (one prompt pair per domain); give the number of experiences.")
        names = getattr(model, "class_names", None)
        if not names or hasattr(model, "task_classes") or type(model).__name__ == "MultiTaskZeroShotClassifier":
            raise TypeError(
                "S-liPrompts needs a ZeroShotClassifier over one label space shared by the domains "
                f"(a domain-incremental stream), got {type(model).__name__}."
            )
        backbone = frozen_backbone(model, "S-liPrompts")
        if n_ctx + 2 > backbone.context_length:
            raise ValueError(
                f"S-liPrompts: n_ctx={n_ctx} leaves no room for the class name in {backbone.name}'s text "
                f"context of {backbone.context_length} tokens."
            )
        plugin = SLiPromptsPlugin(backbone=backbone, class_names=names, n_domains=n_domains,
                                  prompt_length=prompt_length, n_ctx=n_ctx, n_clusters=n_clusters,
                                  distance=distance, seed=seed, text_init=text_init, image_key=image_key)
        super().__init__(model=model, optimizer=optimizer, prompt_plugin=plugin, forward_fn=plugin.logits,
                         **base_kwargs)


def _check(ctx: CheckContext, params: Dict[str, Any]) -> List[str]:
    out: List[str] = []
    bundle = ctx.bundle
    n = params.get("n_domains")
    if n is not None and bundle is not None and n < bundle.n_experiences:
        out.append(method_problem(ctx, "S-liPrompts", "n_domains",
                                  f"got {n}, expected >= {bundle.n_experiences} (the benchmark's experiences)"))
    sizes = backbone_sizes(ctx.model)
    n_ctx = params.get("n_ctx", 16)
    if sizes and isinstance(n_ctx, int) and n_ctx + 3 > sizes["context_length"]:
        out.append(method_problem(ctx, "S-liPrompts", "n_ctx",
                                  f"got {n_ctx}, but the text context holds {sizes['context_length']} tokens "
                                  f"(start, end and the class name need >= 3); expected <= {sizes['context_length'] - 3}"))
    k = params.get("n_clusters", 5)
    if bundle is not None and isinstance(k, int):
        try:
            sizes_train = [len(e.dataset) for e in bundle.scenario.train_stream]
        except Exception:
            sizes_train = []
        if sizes_train and k > min(sizes_train):
            out.append(method_problem(ctx, "S-liPrompts", "n_clusters",
                                      f"got {k}, more than the {min(sizes_train)} training samples of the smallest "
                                      "experience (K of K-means must be <= the samples)"))
    if bundle is not None and len(getattr(bundle, "class_names", None) or []) == 0:
        out.append(method_problem(ctx, "S-liPrompts", "method", "the benchmark has no class names for the text prompts"))
    return out


@register_method("s-liprompts", summary="S-liPrompts: per-domain image+text prompts, K-means domain keys (frozen CLIP)",
                 params_from=SLiPrompts, model_kinds=("clip",), family="prompt",
                 reference="Wang et al., NeurIPS 2022", check=_check, distributed=True)
def _build(ctx: BuildContext, params: dict):
    return build_prompt_strategy(SLiPrompts, ctx, params, per_experience='n_domains', seed=ctx.seed)

__all__ = ["kmeans", "centroid_distances", "select_domain", "SLiPromptBank", "SLiPromptsPlugin", "SLiPrompts"]
