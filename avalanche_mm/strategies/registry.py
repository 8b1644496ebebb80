"""The methods a config can name: one registry, one declaration per method.

A method file (``avalanche_mm/strategies/<method>.py``) holds its plugin, its
strategy class and, at its end, its registration::

    @register_method(
        "zscl",
        summary="ZSCL: reference-set distillation, L2 to task start, weight ensemble",
        params_from=ZSCL,               # config parameters = ZSCL's keyword arguments
        exclude=("reference_images", "reference_texts"),
        model_kinds=("clip",),
        reference="Zheng et al., ICCV 2023",
    )
    def build_zscl(ctx: BuildContext, params: dict):
        return ZSCL(**ctx.common_kwargs(ZSCL), **params, reference_images=...)

The parameters' kinds, defaults, ranges and help come from the signature and
reST docstring of ``params_from`` (see :func:`avalanche_mm.registry.params_from_signature`);
the template's own arguments (model, optimizer, batch sizes, the iteration
schedule, ...) come from the study's ``training`` section through
:class:`BuildContext` and are never method parameters. A ``check`` callable
reports what the method needs from the model and benchmark (``avalanche-mm check``
and ``run`` call it before anything trains).

Other distributions add methods through the entry-point group
``avalanche_mm.methods`` (a module that calls :func:`register_method`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from avalanche_mm.registry import Registry, params_from_signature
from avalanche_mm.schema import Opt

#: template / recipe arguments that come from the study's ``training`` section (never method parameters)
TEMPLATE_ARGS = (
    "model", "optimizer", "criterion", "train_mb_size", "train_epochs", "eval_mb_size", "device",
    "plugins", "evaluator", "eval_every", "peval_mode", "iterations", "warmup", "schedule",
    "label_smoothing", "lr_per_experience", "reset_optimizer", "grad_clip", "seed",
)

MODEL_KINDS = ("clip", "fusion")


def accepted_arguments(cls: Any) -> set:
    """The keyword arguments ``cls(...)`` accepts: its ``__init__``'s, and, while an
    ``__init__`` forwards ``**kwargs``, those of the next class up the MRO."""
    names: set = set()
    for klass in getattr(cls, "__mro__", (cls,)):
        init = klass.__dict__.get("__init__") if isinstance(klass, type) else getattr(klass, "__init__", None)
        if init is None or init is object.__init__:
            continue
        try:
            params = inspect.signature(init).parameters
        except (TypeError, ValueError):
            break
        names |= {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    names.discard("self")
    return names


@dataclass
class BuildContext:
    """Everything a method builder needs.

    :ivar model: the (fresh) model to train.
    :ivar kind: the model kind (``"clip"`` or ``"fusion"``).
    :ivar training: the resolved training settings of this strategy.
    :ivar device: the torch device.
    :ivar evaluator: the ``EvaluationPlugin``.
    :ivar plugins: extra plugins (progress bars, ...).
    :ivar bundle: the benchmark bundle (scenario, reference set, class names, ...).
    :ivar seed: the strategy's seed.
    :ivar world_size: processes training together (torchrun); ``training["batch_size"]``
        is the global batch and :meth:`base_kwargs` gives each process its share.
    """

    model: nn.Module
    kind: str
    training: Dict[str, Any]
    device: torch.device
    evaluator: Any
    plugins: List[Any] = field(default_factory=list)
    bundle: Any = None
    seed: int = 0
    world_size: int = 1

    def optimizer(self, params: Any = None) -> torch.optim.Optimizer:
        """The study's optimizer over the model's trainable parameters (or ``params``)."""
        from avalanche_mm.strategies.finetune import make_clip_optimizer

        t = self.training
        return make_clip_optimizer(
            self.model,
            name=t["optimizer"],
            lr=t["lr"],
            weight_decay=t["weight_decay"],
            betas=t["betas"],
            momentum=t["momentum"],
            **({"params": params} if params is not None else {}),
        )

    def base_kwargs(self) -> Dict[str, Any]:
        """``SupervisedTemplate`` arguments shared by every method."""
        t = self.training
        return {
            "train_mb_size": t["batch_size"] // max(1, self.world_size),
            "eval_mb_size": t["eval_batch_size"],
            "train_epochs": t["epochs"],
            "device": self.device,
            "evaluator": self.evaluator,
        }

    def schedule_kwargs(self) -> Dict[str, Any]:
        """:class:`~avalanche_mm.strategies.FineTune` recipe arguments."""
        t = self.training
        return {
            "iterations": t["iterations"],
            "warmup": t["warmup"],
            "schedule": t["scheduler"],
            "label_smoothing": t["label_smoothing"],
            "lr_per_experience": t["lr_per_experience"],
            "reset_optimizer": t["reset_optimizer"],
            "grad_clip": t["grad_clip"],
        }

    def common_kwargs(self, strategy_cls: Any) -> Dict[str, Any]:
        """Template + recipe arguments that ``strategy_cls`` accepts: model, optimizer,
        plugins, batch sizes, device, evaluator, and (when accepted) the iteration
        schedule and the criterion."""
        accepted = accepted_arguments(strategy_cls)
        kw: Dict[str, Any] = {"model": self.model, "optimizer": self.optimizer(), "plugins": list(self.plugins)}
        kw.update(self.base_kwargs())
        sched = self.schedule_kwargs()
        if "iterations" in accepted:
            kw.update(sched)
        elif "criterion" in accepted:
            kw["criterion"] = self.criterion()
            kw["plugins"] = [self.schedule_plugin()] + kw["plugins"]
        if "seed" in accepted:
            kw["seed"] = self.seed
        return kw

    def schedule_plugin(self):
        """The iteration schedule as a plugin (for templates without it built in)."""
        from avalanche_mm.strategies.finetune import IterationSchedulePlugin

        kw = self.schedule_kwargs()
        kw.pop("label_smoothing")
        return IterationSchedulePlugin(**kw)

    def criterion(self) -> nn.Module:
        """Cross-entropy with the study's label smoothing (masked for task heads)."""
        from avalanche_mm.strategies.finetune import MaskedCrossEntropyLoss

        return MaskedCrossEntropyLoss(label_smoothing=self.training["label_smoothing"])


@dataclass
class CheckContext:
    """What a method's ``check`` sees, before anything is built or trained.

    :ivar key: the config path of the strategy entry (``studies.S.strategies.N``);
        messages name keys under it (``f"{key}.mem_size"``), the same keys ``--set`` takes.
    :ivar kind: the model kind (``"clip"`` or ``"fusion"``).
    :ivar model: the resolved ``model`` section.
    :ivar benchmark: the resolved ``benchmark`` section.
    :ivar training: the resolved training settings of the strategy.
    :ivar bundle: the built benchmark bundle when building it is cheap (the
        offline worlds), else None; ``bundle.modalities``, ``bundle.reference``,
        ``bundle.class_names`` and ``bundle.scenario`` are then available.
    :ivar model_key: the config path of the model section.
    """

    key: str
    kind: str
    model: Mapping[str, Any]
    benchmark: Mapping[str, Any]
    training: Mapping[str, Any]
    bundle: Any = None
    model_key: str = ""


@dataclass
class MethodSpec:
    """A method a config can name.

    :ivar name: the config name.
    :ivar summary: one line for ``avalanche-mm list``.
    :ivar params: parameter name -> :class:`~avalanche_mm.schema.Opt` (derived
        from ``params_from`` at registration).
    :ivar build: ``(ctx, params) -> strategy``.
    :ivar model_kinds: model kinds the method supports.
    :ivar trains: False for methods that never update the weights.
    :ivar reference: the paper.
    :ivar check: ``(CheckContext, params) -> [problem, ...]``, what the method needs.
    :ivar family: the survey's family (regularization, architecture, replay, prompt, baseline).
    :ivar doc: the longer documentation (``avalanche-mm list NAME``).
    :ivar strategy: the strategy class users call from Python (for the docs).
    :ivar distributed: DDP-safe: every state the method keeps is computed from the
        weights or from data every rank sees whole, so it runs under torchrun with
        several processes (verified by a 2-process test); others refuse to start there.
    """

    name: str
    summary: str
    params: Dict[str, Opt]
    build: Callable[[BuildContext, Dict[str, Any]], Any]
    model_kinds: Tuple[str, ...] = MODEL_KINDS
    trains: bool = True
    reference: str = ""
    check: Optional[Callable[[CheckContext, Dict[str, Any]], List[str]]] = None
    family: str = ""
    doc: str = ""
    strategy: Any = None
    distributed: bool = False

    def problems(self, ctx: CheckContext, params: Mapping[str, Any]) -> List[str]:
        """Every problem with using this method in ``ctx`` (model kind, then ``check``)."""
        out: List[str] = []
        if ctx.kind in MODEL_KINDS and ctx.kind not in self.model_kinds:
            out.append(
                f"{ctx.key}.method: {self.name!r} needs a model of kind "
                + " or ".join(repr(k) for k in self.model_kinds)
                + f", but {ctx.model_key or 'model'}.kind is {ctx.kind!r}"
            )
            return out
        if self.check is not None:
            out.extend(self.check(ctx, dict(params)))
        return out


class _MethodRegistry(Registry):
    """:class:`Registry` that also imports every module of ``avalanche_mm.strategies``
    on first access: a method added as one new file there registers itself."""

    def load_entry_points(self) -> List[str]:
        import importlib
        import pkgutil

        import avalanche_mm.strategies as package

        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package.__name__}.{info.name}")
        return super().load_entry_points()


#: every method a config can name (the modules of ``avalanche_mm.strategies`` and
#: the entry-point group ``avalanche_mm.methods``)
METHODS: Registry = _MethodRegistry("method")


def register_method(
    name: str,
    *,
    summary: str,
    params_from: Any = None,
    exclude: Sequence[str] = (),
    only: Optional[Sequence[str]] = None,
    params: Optional[Mapping[str, Opt]] = None,
    model_kinds: Sequence[str] = MODEL_KINDS,
    trains: bool = True,
    reference: str = "",
    check: Optional[Callable[[CheckContext, Dict[str, Any]], List[str]]] = None,
    family: str = "",
    registry: Optional[Registry] = None,
    distributed: bool = False,
):
    """Decorator registering a builder ``(ctx, params) -> strategy`` as method ``name``.

    :param name: the config name (``strategies.<name>.method``).
    :param summary: one line for ``avalanche-mm list``.
    :param params_from: the callable (strategy or plugin class) whose keyword
        arguments are the method's config parameters; template arguments
        (:data:`TEMPLATE_ARGS`) and ``exclude`` are left out.
    :param exclude: more argument names that are not config parameters.
    :param only: keep only these argument names.
    :param params: extra options that are not constructor arguments (rare:
        config-level selections such as a reference-set size).
    :param model_kinds: the model kinds the method can serve.
    :param trains: False for methods that never update weights.
    :param reference: the paper.
    :param check: ``(CheckContext, params) -> [problem, ...]``.
    :param family: survey family (regularization, architecture, replay, prompt, baseline).
    :param registry: the registry (default :data:`METHODS`).
    :param distributed: the method is DDP-safe (see :class:`MethodSpec`).
    """
    reg = METHODS if registry is None else registry
    for k in model_kinds:
        if k not in MODEL_KINDS:
            raise ValueError(f"register_method({name!r}): model kind {k!r} is not one of {MODEL_KINDS}")

    def deco(build: Callable[[BuildContext, Dict[str, Any]], Any]):
        opts: Dict[str, Opt] = {}
        if params_from is not None:
            opts.update(params_from_signature(params_from, exclude=tuple(TEMPLATE_ARGS) + tuple(exclude), only=only))
        if params:
            clash = sorted(set(params) & set(opts))
            if clash:
                raise ValueError(f"register_method({name!r}): {clash} declared both in params and by {params_from!r}")
            opts.update(params)
        doc = inspect.getdoc(params_from) if params_from is not None else ""
        spec = MethodSpec(
            name=name,
            summary=summary,
            params=opts,
            build=build,
            model_kinds=tuple(model_kinds),
            trains=trains,
            reference=reference,
            check=check,
            family=family,
            doc=inspect.getdoc(inspect.getmodule(build)) or doc or "",
            strategy=params_from,
            distributed=bool(distributed),
        )
        reg.register(name, spec, source=build.__module__, summary=summary)
        return build

    return deco


#: extra plugins a config can add to every strategy (``plugins: [name, ...]``): name ->
#: ``factory(ctx: PluginContext) -> SupervisedPlugin or None``; other distributions
#: (and tests) add theirs through the entry-point group ``avalanche_mm.plugins``
PLUGINS: Registry = Registry("plugin")


@dataclass
class PluginContext:
    """What a plugin factory of :data:`PLUGINS` sees.

    :ivar study: the study name.
    :ivar strategy: the strategy's display name.
    :ivar output: the run's results folder.
    :ivar folder: the strategy's results folder.
    :ivar bundle: the study's benchmark bundle (scenario, class names, ...), when known.
    """

    study: str
    strategy: str
    output: str
    folder: str
    bundle: Any = None


def register_plugin(name: str, *, summary: str = ""):
    """Decorator registering ``factory(ctx: PluginContext) -> plugin or None`` as ``name``.

    :param name: the name a config's ``plugins`` list uses.
    :param summary: one line.
    """

    def deco(factory):
        doc = (factory.__doc__ or "").strip().splitlines()
        PLUGINS.register(name, factory, source=factory.__module__, summary=summary or (doc[0] if doc else name))
        return factory

    return deco


def list_methods() -> Dict[str, str]:
    """Method name -> one-line summary."""
    return {name: spec.summary for name, spec in METHODS.items()}


__all__ = [
    "BuildContext",
    "CheckContext",
    "MethodSpec",
    "METHODS",
    "MODEL_KINDS",
    "TEMPLATE_ARGS",
    "register_method",
    "list_methods",
    "accepted_arguments",
    "PLUGINS",
    "PluginContext",
    "register_plugin",
]
