"""Input checks of the main job: strict YAML, finite numbers, safe names and folders, model memory.

Everything a user hands the CLI (a config file, ``--set`` values, an output
path) is checked here before anything is built, so that a bad input ends in
one :class:`~avalanche_mm.schema.ConfigError` naming the key, the value and
the fix instead of a traceback (or, worse, a run that "succeeds" at chance).
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, List, Mapping, Optional, Tuple

import yaml

from avalanche_mm.schema import ConfigError


class StrictYamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys in a mapping (the later one would silently win)."""


def _construct_mapping(loader: StrictYamlLoader, node: yaml.MappingNode, deep: bool = False):
    loader.flatten_mapping(node)
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            continue  # SafeLoader reports unhashable keys itself
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r} (first at line {seen[key].line + 1}); keep only one",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


StrictYamlLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def non_finite_numbers(obj: Any, key: str = "") -> List[Tuple[str, Any]]:
    """``[(dotted key, value)]`` of every NaN or infinite number anywhere in ``obj``."""
    out: List[Tuple[str, Any]] = []
    if isinstance(obj, float):
        if not math.isfinite(obj):
            out.append((key or "<value>", obj))
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            out.extend(non_finite_numbers(v, f"{key}.{k}" if key else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.extend(non_finite_numbers(v, f"{key}[{i}]"))
    return out


def unsafe_name(name: Any) -> Optional[str]:
    """Why ``name`` cannot be a folder name inside the results root (None when it can)."""
    if not isinstance(name, str) or not name.strip():
        return "expected a non-empty name"
    if name in (".", "..") or "/" in name or "\\" in name or "\x00" in name or os.path.isabs(name):
        return "expected a plain folder name (no '/', '\\', '..' or absolute path): it would leave the results folder"
    return None


def check_names(cfg: Mapping[str, Any]) -> List[str]:
    """Errors for the config names that become folders (run name, studies, strategies)."""
    errors = []
    if cfg.get("output") is None:  # the name only becomes a folder when no output is given
        why = unsafe_name(cfg.get("name"))
        if why:
            errors.append(f"name: got {cfg.get('name')!r}, {why} (results/<name> is the default output)")
    for sname, study in (cfg.get("studies") or {}).items():
        why = unsafe_name(sname)
        if why:
            errors.append(f"studies.{sname}: {why}")
        for stname in ((study or {}).get("strategies") or {}) if isinstance(study, Mapping) else ():
            why = unsafe_name(stname)
            if why:
                errors.append(f"studies.{sname}.strategies.{stname}: {why}")
    return errors


def check_output_folder(out: str) -> None:
    """Create ``out`` (a folder we can write) or raise a :class:`ConfigError` saying why not."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError([f"--output {out!r}: is a file, expected a folder for the results; choose another path"])
    probe = out
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise ConfigError([f"--output {out!r}: {probe!r} is a file, so the results folder cannot be created below it"])
    if os.path.isdir(probe) and not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError([f"--output {out!r}: {probe!r} is not writable by this user; choose a folder you can write"])
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise ConfigError([f"--output {out!r}: cannot create the results folder ({err.strerror or err})"]) from err
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError([f"--output {out!r}: the folder is not writable by this user; choose a folder you can write"])


def available_memory() -> Optional[int]:
    """Bytes of memory available to a new allocation (``MemAvailable``), or None when unknown."""
    try:
        with open("/proc/meminfo", "r", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def parameter_bytes(build: Callable[[], Any]) -> Optional[int]:
    """Bytes of the parameters and buffers ``build()`` would allocate, measured on the meta device.

    Nothing is allocated: the model is built with ``torch.device("meta")`` as
    the default device. Returns None when the builder cannot run on meta.
    """
    import torch

    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = build()
    except RuntimeError as err:
        if "overflow" in str(err).lower():  # a tensor whose byte size does not even fit in 64 bits
            return 2**63
        return None
    except Exception:  # noqa: BLE001 - an estimate only; the real build reports real errors
        return None
    if not isinstance(model, torch.nn.Module):
        return None
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        total += t.numel() * t.element_size()
    return total


#: training needs the weights, their gradients and two optimizer moments (Adam) at least
TRAINING_COPIES = 4


def check_model_memory(build: Callable[[], Any], *, key: str, available: Optional[int] = None) -> Optional[int]:
    """Refuse to build a model whose parameters cannot fit in memory.

    :param build: builds the model (called on the meta device only).
    :param key: config key named in the error (``studies.<s>.model``).
    :param available: bytes available (default: :func:`available_memory`).
    :return: the estimated parameter bytes (None when unknown).
    :raises ConfigError: when weights + gradients + optimizer state exceed the memory available.
    """
    need = parameter_bytes(build)
    if need is None:
        return None
    avail = available_memory() if available is None else available
    if need >= 2**63:
        raise ConfigError([f"{key}.params: the model's parameter sizes overflow 64-bit byte counts; use smaller sizes (hidden, width, layers ...)"])
    if avail is not None and need * TRAINING_COPIES > avail:
        raise ConfigError(
            [
                f"{key}.params: the model's parameters would take {need / 2**30:.3g} GiB (about "
                f"{need * TRAINING_COPIES / 2**30:.3g} GiB to train with gradients and optimizer state), but only "
                f"{avail / 2**30:.3g} GiB of memory is available; use smaller sizes (hidden, width, layers ...)"
            ]
        )
    return need


def build_checked(build: Callable[[], Any], *, key: str) -> Any:
    """``build()`` after :func:`check_model_memory`; bad model parameters become a :class:`ConfigError`.

    :param build: builds the model from the config.
    :param key: the config key of the model (``studies.<s>.model``).
    """
    check_model_memory(build, key=key)
    try:
        return build()
    except (ValueError, KeyError, TypeError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise ConfigError([f"{key}: the model cannot be built with these settings: {type(err).__name__}: {msg}"]) from err
    except MemoryError as err:
        raise ConfigError([f"{key}.params: the model does not fit in memory ({err}); use smaller sizes"]) from err


__all__ = [
    "build_checked",
    "StrictYamlLoader",
    "non_finite_numbers",
    "unsafe_name",
    "check_names",
    "check_output_folder",
    "available_memory",
    "parameter_bytes",
    "check_model_memory",
]
