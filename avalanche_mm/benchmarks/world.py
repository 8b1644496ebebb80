"""A procedural multimodal world, generated offline in seconds.

Objects are compositions of four attribute families - ``size``, ``colour``,
``texture`` and ``shape`` - and every sample of an object comes with:

- ``image``: ``FloatTensor[3, S, S]`` in ``[0, 1]``, a rendering of the shape
  in its colour and texture at a random position and small rotation, on a
  background given by the domain's rendering style;
- ``text``: a caption describing the attributes compositionally
  (``"a photo of a large red striped circle"``), with the domain's
  vocabulary (synonyms); raw strings are kept on :class:`WorldSamples` and
  tokenised by a given tokenizer (default: :meth:`ProceduralWorld.tokenizer`);
- ``audio``: a synthesised tone whose pitch encodes the shape, a second
  partial's interval the colour, a tremolo rate the texture and the
  loudness/duration the size; a log-magnitude spectrogram ``[F, T]``
  (default) or the waveform ``[L]``;
- ``sensor`` (optional): a 3-channel series ``[3, L]`` whose frequency,
  phase/amplitude and trend encode shape, colour/size and texture.

Each modality's informativeness is a knob: ``noise`` (pixel/waveform/sensor
noise, or for text the probability that an attribute word is replaced by a
random one) and ``modality_attributes`` (a modality encodes only the listed
families; the others take random, label-irrelevant values in it).

The attribute combinations are split, by seed, into a **reference**
("pretraining") split and a disjoint **task** split; every attribute value
appears in both. A CLIP-style model pretrained on reference image-caption
pairs recognises task combinations zero-shot from their names, because
captions are compositional. Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from avalanche_mm.data import WordTokenizer, make_multimodal_dataset, make_pair_dataset

from .conditions import apply_modality_conditions, modality_incremental_scenario
from .scenarios import (
    MultimodalScenario,
    TaskDataset,
    class_incremental_scenario,
    domain_incremental_scenario,
    multi_dataset_scenario,
    retrieval_phases_scenario,
)

#: Attribute families, in the order they appear in descriptions.
FAMILIES: Tuple[str, ...] = ("size", "colour", "texture", "shape")
#: Modalities the world can produce.
WORLD_MODALITIES: Tuple[str, ...] = ("image", "text", "audio", "sensor")

_SHAPES = ("circle", "square", "triangle", "cross", "diamond", "ring", "bar", "semicircle")
_COLOURS = {
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.75, 0.20),
    "blue": (0.15, 0.30, 0.90),
    "yellow": (0.92, 0.85, 0.15),
    "purple": (0.60, 0.20, 0.75),
    "orange": (0.95, 0.55, 0.10),
    "cyan": (0.10, 0.80, 0.85),
    "pink": (0.95, 0.50, 0.70),
}
_TEXTURES = ("solid", "striped", "dotted", "checkered", "wavy")
_SIZES = ("small", "large", "medium")
_SIZE_SCALE = {"small": 0.42, "medium": 0.56, "large": 0.72}

# domain d uses synonym d % 3 (vocabulary shift); index 0 is the canonical word
_SYNONYMS: Dict[str, Tuple[str, str, str]] = {
    "circle": ("circle", "disc", "round"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "wedge", "pyramid"),
    "cross": ("cross", "plus", "crosshair"),
    "diamond": ("diamond", "rhombus", "lozenge"),
    "ring": ("ring", "hoop", "annulus"),
    "bar": ("bar", "rod", "beam"),
    "semicircle": ("semicircle", "dome", "halfmoon"),
    "red": ("red", "crimson", "scarlet"),
    "green": ("green", "emerald", "lime"),
    "blue": ("blue", "azure", "navy"),
    "yellow": ("yellow", "golden", "lemon"),
    "purple": ("purple", "violet", "lilac"),
    "orange": ("orange", "amber", "tangerine"),
    "cyan": ("cyan", "teal", "turquoise"),
    "pink": ("pink", "rose", "salmon"),
    "solid": ("solid", "plain", "filled"),
    "striped": ("striped", "banded", "lined"),
    "dotted": ("dotted", "spotted", "speckled"),
    "checkered": ("checkered", "chequered", "tiled"),
    "wavy": ("wavy", "rippled", "undulating"),
    "small": ("small", "tiny", "little"),
    "large": ("large", "big", "huge"),
    "medium": ("medium", "midsize", "average"),
}
_TEMPLATES = (
    "a {}",
    "a photo of a {}",
    "an image of a {}",
    "there is a {} here",
    "this is a {}",
    "a picture showing a {}",
)
#: Rendering styles, cycled over domains.
STYLES: Tuple[str, ...] = ("plain", "noisy", "light", "outline")
_TARGET_TEMPLATES = {
    "shape": ("a {}.", "a photo of a {}.", "a {} shape."),
    "colour": ("something {}.", "a {} object.", "a photo of something {}."),
    "texture": ("a {} object.", "a {} pattern.", "a photo of a {} thing."),
    "size": ("a {} object.", "a photo of a {} thing."),
    "combination": ("a {}.", "a photo of a {}.", "an image of a {}."),
}

_DEFAULT_NOISE = {"image": 0.05, "text": 0.0, "audio": 0.1, "sensor": 0.1}


def _stable(*parts) -> int:
    return zlib.crc32("/".join(str(p) for p in parts).encode())


def _values(what: str, value, catalogue, default: int):
    if value is None:
        value = default
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if not 2 <= value <= len(catalogue):
            raise ValueError(
                f"ProceduralWorld: {what}={value} must be between 2 and {len(catalogue)} "
                f"(available: {list(catalogue)})."
            )
        return tuple(list(catalogue)[: int(value)])
    names = tuple(str(v) for v in value)
    unknown = [n for n in names if n not in catalogue]
    if unknown or len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(
            f"ProceduralWorld: {what}={list(names)} must be at least two distinct names among "
            f"{list(catalogue)}; unknown: {unknown}."
        )
    return names


@dataclass
class WorldSamples:
    """Raw generated samples (numpy/tensors and caption strings).

    :ivar attributes: ``LongTensor[N, 4]`` attribute value ids per family
        (:data:`FAMILIES` order) of the object each sample shows.
    :ivar domains: ``LongTensor[N]`` domain of each sample.
    :ivar modalities: modality name -> ``Tensor[N, ...]`` (``text`` is absent
        here: see ``captions``).
    :ivar captions: one caption string per sample.
    :ivar descriptions: the canonical object description per sample.
    """

    attributes: torch.Tensor
    domains: torch.Tensor
    modalities: Dict[str, torch.Tensor]
    captions: List[str]
    descriptions: List[str]

    def __len__(self) -> int:
        return len(self.captions)

    def to_dataset(
        self,
        targets: Sequence[int],
        *,
        modalities: Sequence[str],
        tokenizer: Callable[[str], torch.Tensor],
        task_labels: int = 0,
    ):
        """A task-aware multimodal dataset with the given targets."""
        cols = {}
        for m in modalities:
            if m == "text":
                cols["text"] = list(self.captions)
            elif m in self.modalities:
                cols[m] = self.modalities[m]
            else:
                raise KeyError(
                    f"modality '{m}' was not generated (generated: "
                    f"{sorted(self.modalities) + ['text']})."
                )
        return make_multimodal_dataset(
            cols,
            list(targets),
            task_labels=task_labels,
            tokenizers={"text": tokenizer} if "text" in cols else None,
            variable=["text"] if "text" in cols else None,
        )

    def to_pair_dataset(self, *, tokenizer: Callable[[str], torch.Tensor]):
        """An image-text pair dataset (targets = pair index)."""
        if "image" not in self.modalities:
            raise KeyError("to_pair_dataset needs the image modality; generate it.")
        return make_pair_dataset(self.modalities["image"], list(self.captions), tokenizer=tokenizer)


@dataclass(frozen=True)
class WorldTask:
    """One "dataset" of a world MTIL sequence.

    :param name: dataset name.
    :param target: what the classes are: ``"shape"``, ``"colour"``,
        ``"texture"``, ``"size"`` (class names are the attribute words) or
        ``"combination"`` (class names are object descriptions).
    :param domain: the domain its samples are rendered/described in.
    :param num_classes: for ``"combination"``: how many held-out
        combinations; for attributes: how many values (default: all).
    """

    name: str
    target: str = "combination"
    domain: int = 0
    num_classes: Optional[int] = None


class ProceduralWorld:
    """A deterministic procedural multimodal world.

    :param seed: the world's seed (split of combinations, every sample).
    :param image_size: image side ``S`` in pixels (>= 8).
    :param shapes: number of shapes (2..8) or their names.
    :param colours: number of colours (2..8) or their names.
    :param textures: number of textures (2..5) or their names.
    :param sizes: number of sizes (2..3) or their names.
    :param num_domains: number of domains; domain ``d`` uses rendering style
        ``STYLES[d % 4]`` and synonym set ``d % 3`` (0 = canonical words).
    :param reference_fraction: fraction of the combinations in the
        reference (pretraining) split.
    :param noise: modality -> informativeness knob: pixel noise std
        (image), noise std relative to the signal (audio, sensor), or the
        probability of replacing each attribute word (text).
    :param modality_attributes: modality -> families the modality encodes
        (default: all); other families are random in that modality.
    :param audio_format: ``"spectrogram"`` (``[F, T]``) or ``"waveform"``
        (``[L]``).
    :param audio_length: waveform length ``L`` (the spectrogram has
        ``T = L / 32 + 1`` frames and ``F = 33`` bins).
    :param sensor_length: length of the sensor series.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        image_size: int = 32,
        shapes: Union[int, Sequence[str]] = 6,
        colours: Union[int, Sequence[str]] = 6,
        textures: Union[int, Sequence[str]] = 4,
        sizes: Union[int, Sequence[str]] = 2,
        num_domains: int = 1,
        reference_fraction: float = 0.5,
        noise: Optional[Mapping[str, float]] = None,
        modality_attributes: Optional[Mapping[str, Sequence[str]]] = None,
        audio_format: str = "spectrogram",
        audio_length: int = 1024,
        sensor_length: int = 64,
    ):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"ProceduralWorld: seed must be an int, got {seed!r}.")
        if not isinstance(image_size, (int, np.integer)) or image_size < 8:
            raise ValueError(f"ProceduralWorld: image_size must be an int >= 8, got {image_size!r}.")
        if not isinstance(num_domains, (int, np.integer)) or num_domains < 1:
            raise ValueError(f"ProceduralWorld: num_domains must be >= 1, got {num_domains!r}.")
        if not 0.0 < float(reference_fraction) < 1.0:
            raise ValueError(
                "ProceduralWorld: reference_fraction must be strictly between 0 and 1, got "
                f"{reference_fraction!r}."
            )
        if audio_format not in ("spectrogram", "waveform"):
            raise ValueError(
                f"ProceduralWorld: audio_format must be 'spectrogram' or 'waveform', got "
                f"{audio_format!r}."
            )
        if not isinstance(audio_length, (int, np.integer)) or audio_length < 128:
            raise ValueError(f"ProceduralWorld: audio_length must be an int >= 128, got {audio_length!r}.")
        if not isinstance(sensor_length, (int, np.integer)) or sensor_length < 16:
            raise ValueError(f"ProceduralWorld: sensor_length must be an int >= 16, got {sensor_length!r}.")
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.values: Dict[str, Tuple[str, ...]] = {
            "size": _values("sizes", sizes, _SIZES, 2),
            "colour": _values("colours", colours, _COLOURS, 6),
            "texture": _values("textures", textures, _TEXTURES, 4),
            "shape": _values("shapes", shapes, _SHAPES, 6),
        }
        self.num_domains = int(num_domains)
        self.reference_fraction = float(reference_fraction)
        self.noise = dict(_DEFAULT_NOISE)
        for m, v in (noise or {}).items():
            if m not in WORLD_MODALITIES:
                raise KeyError(f"noise: unknown modality {m!r}; expected one of {WORLD_MODALITIES}.")
            if not float(v) >= 0:
                raise ValueError(f"noise['{m}'] must be >= 0, got {v!r}.")
            if m == "text" and float(v) > 1:
                raise ValueError(f"noise['text'] is a probability in [0, 1], got {v!r}.")
            self.noise[m] = float(v)
        self.modality_attributes: Dict[str, Tuple[str, ...]] = {m: FAMILIES for m in WORLD_MODALITIES}
        for m, fams in (modality_attributes or {}).items():
            if m not in WORLD_MODALITIES:
                raise KeyError(
                    f"modality_attributes: unknown modality {m!r}; expected one of {WORLD_MODALITIES}."
                )
            bad = [f for f in fams if f not in FAMILIES]
            if bad:
                raise ValueError(
                    f"modality_attributes['{m}'] has unknown families {bad}; families are {FAMILIES}."
                )
            self.modality_attributes[m] = tuple(fams)
        self.audio_format = audio_format
        self.audio_length = int(audio_length)
        self.sensor_length = int(sensor_length)
        self._split_combinations()

    # ------------------------------------------------------------------
    # combinations
    # ------------------------------------------------------------------
    @property
    def cardinalities(self) -> Tuple[int, ...]:
        """Number of values per family (:data:`FAMILIES` order)."""
        return tuple(len(self.values[f]) for f in FAMILIES)

    def _split_combinations(self) -> None:
        grids = np.meshgrid(*[np.arange(k) for k in self.cardinalities], indexing="ij")
        combos = np.stack([g.reshape(-1) for g in grids], axis=1)
        rng = np.random.default_rng(_stable(self.seed, "split"))
        n_ref = int(round(self.reference_fraction * len(combos)))
        n_ref = min(max(n_ref, 1), len(combos) - 1)
        for _ in range(1000):
            perm = rng.permutation(len(combos))
            ref, task = combos[perm[:n_ref]], combos[perm[n_ref:]]
            if self._covers(ref) and self._covers(task):
                break
        else:
            raise ValueError(
                "ProceduralWorld: could not split the combinations so that every attribute "
                "value appears in both the reference and the task split; use more values "
                "or a reference_fraction closer to 0.5."
            )
        order = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
        self._reference = order(ref)
        self._task = order(task)

    def _covers(self, combos: np.ndarray) -> bool:
        return all(
            len(np.unique(combos[:, j])) == k for j, k in enumerate(self.cardinalities)
        )

    def combinations(self, split: str = "task") -> List[Tuple[int, ...]]:
        """Attribute-id tuples of the ``"reference"``, ``"task"`` or ``"all"`` split."""
        if split == "reference":
            arr = self._reference
        elif split == "task":
            arr = self._task
        elif split == "all":
            arr = np.concatenate([self._reference, self._task])
            arr = arr[np.lexsort(arr.T[::-1])]
        else:
            raise ValueError(f"split must be 'reference', 'task' or 'all', got {split!r}.")
        return [tuple(int(v) for v in row) for row in arr]

    def describe(self, combination: Sequence[int], *, domain: int = 0) -> str:
        """The object description, e.g. ``"large red striped circle"``."""
        combination = self._check_combo(combination)
        return " ".join(self._word(f, combination[j], domain) for j, f in enumerate(FAMILIES))

    def attributes_of(self, combination: Sequence[int]) -> Dict[str, str]:
        """Family -> value name of a combination."""
        combination = self._check_combo(combination)
        return {f: self.values[f][combination[j]] for j, f in enumerate(FAMILIES)}

    def _check_combo(self, combination) -> Tuple[int, ...]:
        combo = tuple(int(v) for v in combination)
        if len(combo) != len(FAMILIES) or any(
            not 0 <= v < k for v, k in zip(combo, self.cardinalities)
        ):
            raise ValueError(
                f"combination {combination!r} must be {len(FAMILIES)} ids within "
                f"{self.cardinalities} (families {FAMILIES})."
            )
        return combo

    def _word(self, family: str, value_id: int, domain: int) -> str:
        return _SYNONYMS[self.values[family][value_id]][domain % 3]

    def vocabulary(self) -> List[str]:
        """Every word a caption, description or prompt of this world can use."""
        words: List[str] = []
        for f in FAMILIES:
            for v in self.values[f]:
                words.extend(_SYNONYMS[v])
        for t in _TEMPLATES + sum(_TARGET_TEMPLATES.values(), ()):
            words.extend(t.replace("{}", " ").replace(".", " ").split())
        words.extend(["object", "thing", "shape", "pattern", "something"])
        return list(dict.fromkeys(words))

    def tokenizer(self, *, max_length: Optional[int] = None) -> WordTokenizer:
        """A :class:`~avalanche_mm.data.WordTokenizer` over :meth:`vocabulary`."""
        return WordTokenizer(self.vocabulary(), max_length=max_length)

    def style(self, domain: int) -> str:
        """The rendering style of ``domain``."""
        return STYLES[int(domain) % len(STYLES)]

    # ------------------------------------------------------------------
    # sample generation
    # ------------------------------------------------------------------
    def generate(
        self,
        combinations: Sequence[Sequence[int]],
        *,
        domains: Union[int, Sequence[int]] = 0,
        modalities: Sequence[str] = ("image", "text", "audio"),
        tag: str = "samples",
    ) -> WorldSamples:
        """Generate one sample per entry of ``combinations``.

        :param combinations: attribute-id tuples (repeat one to get several
            samples of it).
        :param domains: one domain for all samples, or one per sample.
        :param modalities: which of :data:`WORLD_MODALITIES` to generate.
        :param tag: a name mixed into the seed, so different calls (e.g.
            ``"train"`` and ``"test"``) draw different samples while each
            stays reproducible.
        """
        attrs = np.asarray([self._check_combo(c) for c in combinations], dtype=np.int64)
        n = len(attrs)
        if n == 0:
            raise ValueError("generate: no combinations given.")
        if isinstance(domains, (int, np.integer)):
            dom = np.full(n, int(domains), dtype=np.int64)
        else:
            dom = np.asarray(list(domains), dtype=np.int64)
            if dom.shape != (n,):
                raise ValueError(f"generate: {len(dom)} domains for {n} samples.")
        if dom.min() < 0 or dom.max() >= self.num_domains:
            raise ValueError(
                f"generate: domains must be in 0..{self.num_domains - 1} (num_domains="
                f"{self.num_domains}), got {sorted(set(dom.tolist()))}."
            )
        unknown = [m for m in modalities if m not in WORLD_MODALITIES]
        if unknown or not modalities:
            raise ValueError(
                f"generate: modalities must be a non-empty subset of {WORLD_MODALITIES}, "
                f"got {list(modalities)}."
            )
        out: Dict[str, torch.Tensor] = {}
        rngs = {m: np.random.default_rng(_stable(self.seed, tag, m)) for m in WORLD_MODALITIES}
        if "image" in modalities:
            a = self._irrelevant(attrs, "image", rngs["image"])
            out["image"] = torch.from_numpy(self._render(a, dom, rngs["image"]))
        if "audio" in modalities:
            a = self._irrelevant(attrs, "audio", rngs["audio"])
            out["audio"] = self._audio(a, rngs["audio"])
        if "sensor" in modalities:
            a = self._irrelevant(attrs, "sensor", rngs["sensor"])
            out["sensor"] = torch.from_numpy(self._sensor(a, rngs["sensor"]))
        text_attrs = self._irrelevant(attrs, "text", rngs["text"])
        captions = self._captions(text_attrs, dom, rngs["text"])
        descriptions = [self.describe(c) for c in attrs.tolist()]
        return WorldSamples(
            attributes=torch.from_numpy(attrs),
            domains=torch.from_numpy(dom),
            modalities=out,
            captions=captions,
            descriptions=descriptions,
        )

    def _irrelevant(self, attrs, modality, rng):
        keep = self.modality_attributes[modality]
        if len(keep) == len(FAMILIES):
            return attrs
        a = attrs.copy()
        for j, f in enumerate(FAMILIES):
            if f not in keep:
                a[:, j] = rng.integers(0, self.cardinalities[j], size=len(a))
        return a

    # -- image ---------------------------------------------------------
    def _render(self, attrs, dom, rng, chunk: int = 2048) -> np.ndarray:
        n, s = len(attrs), self.image_size
        out = np.empty((n, 3, s, s), dtype=np.float32)
        for start in range(0, n, chunk):
            sl = slice(start, min(start + chunk, n))
            out[sl] = self._render_chunk(attrs[sl], dom[sl], rng)
        return out

    def _render_chunk(self, attrs, dom, rng) -> np.ndarray:
        n, s = len(attrs), self.image_size
        f32 = np.float32
        lin = ((np.arange(s, dtype=f32) + 0.5) / s * 2 - 1).astype(f32)
        gx, gy = lin[None, None, :], lin[None, :, None]
        size_names = self.values["size"]
        r = np.array([_SIZE_SCALE[size_names[i]] for i in attrs[:, 0]], dtype=f32)
        r *= rng.uniform(0.9, 1.1, n).astype(f32)
        room = np.maximum(0.95 - r, 0.0)
        cx = (rng.uniform(-1, 1, n).astype(f32) * room)[:, None, None]
        cy = (rng.uniform(-1, 1, n).astype(f32) * room)[:, None, None]
        th = rng.uniform(-0.35, 0.35, n).astype(f32)
        cos, sin = np.cos(th)[:, None, None], np.sin(th)[:, None, None]
        dx, dy = gx - cx, gy - cy
        rr = r[:, None, None]
        u = (dx * cos + dy * sin) / rr
        v = (-dx * sin + dy * cos) / rr
        mask = np.zeros((n, s, s), dtype=bool)
        shape_names = self.values["shape"]
        for k, name in enumerate(shape_names):
            sel = attrs[:, 3] == k
            if sel.any():
                mask[sel] = _SHAPE_FN[name](u[sel], v[sel])
        # texture pattern, in image coordinates (phase jitter per sample)
        pattern = np.ones((n, s, s), dtype=bool)
        tex_names = self.values["texture"]
        ph1 = rng.uniform(0, 1, n).astype(f32)[:, None, None]
        ph2 = rng.uniform(0, 1, n).astype(f32)[:, None, None]
        for k, name in enumerate(tex_names):
            sel = attrs[:, 2] == k
            if sel.any() and name != "solid":
                pattern[sel] = _TEXTURE_FN[name](gx, gy, ph1[sel], ph2[sel])
        shade = np.where(pattern, f32(1.0), f32(0.35))
        colour_names = self.values["colour"]
        base = np.array([_COLOURS[colour_names[i]] for i in attrs[:, 1]], dtype=f32)
        base = np.clip(base + rng.normal(0, 0.04, base.shape).astype(f32), 0, 1)
        fg = base[:, :, None, None] * shade[:, None]
        bg = np.empty((n, 3, s, s), dtype=f32)
        styles = np.array([self.style(d) for d in dom])
        for style in np.unique(styles):
            sel = styles == style
            m = int(sel.sum())
            if style == "noisy":
                bg[sel] = rng.uniform(0.0, 0.5, (m, 3, s, s)).astype(f32)
            elif style == "light":
                bg[sel] = f32(0.85)
                fg[sel] = fg[sel] * f32(0.8)
            else:  # plain and outline
                bg[sel] = f32(0.1)
            if style == "outline":
                inner = mask[sel]
                er = inner.copy()
                er[:, 1:, :] &= inner[:, :-1, :]
                er[:, :-1, :] &= inner[:, 1:, :]
                er[:, :, 1:] &= inner[:, :, :-1]
                er[:, :, :-1] &= inner[:, :, 1:]
                mask[sel] = inner & ~er
        # domains beyond the style cycle shift the background hue
        hue = (dom // len(STYLES)).astype(f32)
        if hue.any():
            tint = np.stack([np.sin(hue), np.cos(hue), -np.sin(hue)], axis=1) * f32(0.08)
            bg = np.clip(bg + tint[:, :, None, None], 0, 1)
        img = np.where(mask[:, None], fg, bg)
        if self.noise["image"] > 0:
            img = img + rng.normal(0, self.noise["image"], img.shape).astype(f32)
        return np.clip(img, 0, 1).astype(f32)

    # -- text ----------------------------------------------------------
    def _captions(self, attrs, dom, rng) -> List[str]:
        p = self.noise["text"]
        n = len(attrs)
        if p > 0:
            attrs = attrs.copy()
            flip = rng.random(attrs.shape) < p
            rand = np.stack(
                [rng.integers(0, k, n) for k in self.cardinalities], axis=1
            )
            attrs[flip] = rand[flip]
        tpl = rng.integers(0, len(_TEMPLATES), n)
        caps = []
        for i in range(n):
            d = int(dom[i])
            desc = " ".join(
                self._word(f, int(attrs[i, j]), d) for j, f in enumerate(FAMILIES)
            )
            caps.append(_TEMPLATES[tpl[i]].format(desc))
        return caps

    # -- audio ---------------------------------------------------------
    def _audio(self, attrs, rng) -> torch.Tensor:
        n, length = len(attrs), self.audio_length
        sr = 2048.0
        k_size, k_col, k_tex, k_shape = self.cardinalities
        f0 = np.linspace(96, 352, k_shape)[attrs[:, 3]] * (1 + 0.015 * rng.standard_normal(n))
        ratio = np.linspace(1.25, 2.75, k_col)[attrs[:, 1]]
        am = np.array([0.0, 16.0, 8.0, 4.0, 2.0])[attrs[:, 2]]
        amp = np.linspace(0.35, 1.0, k_size)[attrs[:, 0]]
        dur = np.linspace(0.55, 1.0, k_size)[attrs[:, 0]]
        onset = rng.uniform(0.0, 0.1, n) * (1 - dur)
        phase = rng.uniform(0, 2 * np.pi, (n, 3))
        col = lambda a: torch.as_tensor(a, dtype=torch.float32)[:, None]  # noqa: E731
        t = torch.arange(length, dtype=torch.float32)[None] / sr
        tt = t / (length / sr)
        env = ((tt >= col(onset)) & (tt <= col(onset + dur))).float()
        w0 = col(2 * np.pi * f0)
        tone = torch.sin(w0 * t + col(phase[:, 0])) + 0.6 * torch.sin(
            w0 * col(ratio) * t + col(phase[:, 1])
        )
        am_t = col(am)
        trem = 1 - 0.8 * (am_t > 0).float() * (
            0.5 + 0.5 * torch.sin(2 * np.pi * am_t * t + col(phase[:, 2]))
        )
        wave = col(amp) * env * tone * trem
        if self.noise["audio"] > 0:
            g = torch.Generator().manual_seed(int(rng.integers(0, 2**31)))
            wave += self.noise["audio"] * torch.randn(wave.shape, generator=g)
        if self.audio_format == "waveform":
            return wave
        spec = torch.stft(
            wave,
            n_fft=64,
            hop_length=32,
            window=torch.hann_window(64),
            center=True,
            return_complex=True,
        ).abs()
        return torch.log1p(4.0 * spec)

    # -- sensor --------------------------------------------------------
    def _sensor(self, attrs, rng) -> np.ndarray:
        n, length = len(attrs), self.sensor_length
        t = (np.arange(length, dtype=np.float32) / length)[None]
        freq = (1 + attrs[:, 3])[:, None].astype(np.float32)
        colour_phase = (2 * np.pi * attrs[:, 1] / self.cardinalities[1])[:, None]
        amp = np.linspace(0.4, 1.0, self.cardinalities[0])[attrs[:, 0]][:, None]
        slope = np.linspace(-1.0, 1.0, self.cardinalities[2])[attrs[:, 2]][:, None]
        jitter = rng.uniform(0, 2 * np.pi, (n, 1))
        ch0 = np.sin(2 * np.pi * freq * t + jitter)
        ch1 = amp * np.sin(2 * np.pi * 2 * t + colour_phase)
        ch2 = slope * (2 * t - 1)
        out = np.stack([ch0, ch1, ch2], axis=1).astype(np.float32)
        if self.noise["sensor"] > 0:
            out += (self.noise["sensor"] * rng.standard_normal(out.shape)).astype(np.float32)
        return out

    # ------------------------------------------------------------------
    # splits and datasets
    # ------------------------------------------------------------------
    def reference_samples(
        self,
        *,
        per_combination: int = 20,
        domains: Sequence[int] = (0,),
        modalities: Sequence[str] = ("image", "text"),
        tag: str = "reference",
    ) -> WorldSamples:
        """Samples of the reference (pretraining) combinations, captions included."""
        if not isinstance(per_combination, (int, np.integer)) or per_combination < 1:
            raise ValueError(f"per_combination must be a positive int, got {per_combination!r}.")
        combos = [c for c in self.combinations("reference") for _ in range(per_combination)]
        doms = np.resize(np.asarray(list(domains), dtype=np.int64), len(combos))
        return self.generate(combos, domains=doms, modalities=modalities, tag=tag)

    def reference_pairs(
        self,
        *,
        per_combination: int = 20,
        domains: Sequence[int] = (0,),
        tokenizer: Optional[Callable[[str], torch.Tensor]] = None,
    ):
        """The reference split as an image-text pair dataset (for pretraining).

        Captions are tokenised with ``tokenizer`` (default: :meth:`tokenizer`);
        use :meth:`reference_samples` for the raw strings.
        """
        samples = self.reference_samples(per_combination=per_combination, domains=domains)
        return samples.to_pair_dataset(tokenizer=tokenizer or self.tokenizer())

    def task_classes(self, num_classes: int, *, seed: int = 0) -> List[Tuple[int, ...]]:
        """``num_classes`` held-out combinations, chosen by ``seed``."""
        task = self.combinations("task")
        if not isinstance(num_classes, (int, np.integer)) or not 2 <= num_classes <= len(task):
            raise ValueError(
                f"num_classes must be between 2 and the {len(task)} held-out combinations of "
                f"this world, got {num_classes!r}; use more shapes/colours/textures/sizes for "
                "more classes."
            )
        rng = np.random.default_rng(_stable(self.seed, "classes", seed))
        pick = sorted(rng.choice(len(task), size=int(num_classes), replace=False).tolist())
        return [task[i] for i in pick]

    def classification_split(
        self,
        classes: Sequence[Tuple[int, ...]],
        *,
        per_class: int,
        domain: int = 0,
        modalities: Sequence[str] = ("image", "text", "audio"),
        tokenizer: Optional[Callable[[str], torch.Tensor]] = None,
        tag: str = "split",
        encode: Optional[Callable[[Dict[str, torch.Tensor]], Dict[str, torch.Tensor]]] = None,
        image_frames: int = 1,
    ):
        """A dataset with ``per_class`` samples of each class (target = position).

        ``image_frames`` > 1 makes each image a clip ``[C, F, H, W]`` of F independent
        renderings of the sample's object (own placement and noise per frame, as video frames).
        ``encode`` (optional) maps the generated modality tensors (name -> ``Tensor[N, ...]``)
        to the tensors the dataset holds instead (e.g. a frozen encoder's pre-extracted features).
        """
        if not isinstance(per_class, (int, np.integer)) or per_class < 1:
            raise ValueError(f"per_class must be a positive int, got {per_class!r}.")
        if isinstance(image_frames, bool) or not isinstance(image_frames, (int, np.integer)) or image_frames < 1:
            raise ValueError(f"image_frames must be a positive int, got {image_frames!r}.")
        combos = [c for c in classes for _ in range(per_class)]
        targets = [k for k in range(len(classes)) for _ in range(per_class)]
        samples = self.generate(combos, domains=domain, modalities=modalities, tag=tag)
        if image_frames > 1 and "image" in samples.modalities:
            clips = [samples.modalities["image"]] + [
                self.generate(combos, domains=domain, modalities=("image",), tag=f"{tag}/frame{k}").modalities["image"]
                for k in range(1, int(image_frames))
            ]
            samples.modalities["image"] = torch.stack(clips, dim=2)  # [N, C, F, H, W]
        if encode is not None:
            samples.modalities = dict(encode(dict(samples.modalities)))
        return samples.to_dataset(
            targets, modalities=modalities, tokenizer=tokenizer or self.tokenizer()
        )

    def _info(self, classes, domain=0):
        return {
            "world_seed": self.seed,
            "class_attributes": [self.attributes_of(c) for c in classes],
            "style": self.style(domain),
        }

    # ------------------------------------------------------------------
    # benchmarks
    # ------------------------------------------------------------------
    def class_incremental_benchmark(
        self,
        *,
        num_classes: int = 10,
        num_experiences: int = 5,
        train_per_class: int = 50,
        test_per_class: int = 20,
        modalities: Sequence[str] = ("image", "text", "audio"),
        domain: int = 0,
        seed: int = 0,
        class_order: Optional[Sequence[int]] = None,
        task_labels: bool = False,
        validation_size: float = 0.0,
        tokenizer: Optional[Callable[[str], torch.Tensor]] = None,
        missing_rates: Optional[Mapping] = None,
        test_missing_rates: Optional[Mapping] = None,
        corruptions: Optional[Mapping] = None,
        encode: Optional[Callable[[Dict[str, torch.Tensor]], Dict[str, torch.Tensor]]] = None,
        image_frames: int = 1,
    ) -> MultimodalScenario:
        """Class-incremental (or task-incremental) over held-out combinations.

        Class names are object descriptions; ``scenario.info["class_attributes"]``
        gives each class's attributes. ``missing_rates``/``corruptions`` apply
        to the training streams, ``test_missing_rates`` to the test stream
        (see :func:`~avalanche_mm.benchmarks.apply_modality_conditions`).
        ``encode`` replaces the generated modality tensors of every split and
        ``image_frames`` > 1 makes images clips (see :meth:`classification_split`).
        """
        classes = self.task_classes(num_classes, seed=seed)
        train = self.classification_split(
            classes, per_class=train_per_class, domain=domain, modalities=modalities,
            tokenizer=tokenizer, tag=f"ci/{seed}/train", encode=encode, image_frames=image_frames,
        )
        test = self.classification_split(
            classes, per_class=test_per_class, domain=domain, modalities=modalities,
            tokenizer=tokenizer, tag=f"ci/{seed}/test", encode=encode, image_frames=image_frames,
        )
        bench = class_incremental_scenario(
            train,
            test,
            num_experiences=num_experiences,
            class_order=class_order,
            seed=seed if class_order is None else 0,
            class_names=[self.describe(c) for c in classes],
            task_labels=task_labels,
            validation_size=validation_size,
            name="world",
            info=self._info(classes, domain),
        )
        return self._conditions(bench, missing_rates, test_missing_rates, corruptions, seed)

    def _conditions(self, bench, missing_rates, test_missing_rates, corruptions, seed):
        train_streams = tuple(s for s in ("train", "valid") if s in bench.streams)
        if missing_rates or corruptions:
            bench = apply_modality_conditions(
                bench, missing_rates=missing_rates, corruptions=corruptions,
                streams=train_streams, seed=seed,
            )
        if test_missing_rates:
            bench = apply_modality_conditions(
                bench, missing_rates=test_missing_rates, streams=("test",), seed=seed + 1
            )
        return bench

    def domain_incremental_benchmark(
        self,
        *,
        num_classes: int = 10,
        domains: Optional[Sequence[int]] = None,
        train_per_class: int = 40,
        test_per_class: int = 20,
        modalities: Sequence[str] = ("image", "text", "audio"),
        seed: int = 0,
        task_labels: bool = False,
        validation_size: float = 0.0,
        tokenizer: Optional[Callable[[str], torch.Tensor]] = None,
    ) -> MultimodalScenario:
        """Domain-incremental: the same classes, one experience per domain.

        Domains change the rendering style and the caption vocabulary; class
        names use the canonical words.
        """
        domains = list(range(self.num_domains)) if domains is None else [int(d) for d in domains]
        if len(domains) < 2:
            raise ValueError(
                "domain_incremental_benchmark needs at least two domains; build the world with "
                f"num_domains >= 2 (it has {self.num_domains})."
            )
        classes = self.task_classes(num_classes, seed=seed)
        trains, tests = [], []
        for d in domains:
            trains.append(self.classification_split(
                classes, per_class=train_per_class, domain=d, modalities=modalities,
                tokenizer=tokenizer, tag=f"di/{seed}/{d}/train"))
            tests.append(self.classification_split(
                classes, per_class=test_per_class, domain=d, modalities=modalities,
                tokenizer=tokenizer, tag=f"di/{seed}/{d}/test"))
        return domain_incremental_scenario(
            trains,
            tests,
            domain_names=[f"{self.style(d)}-{d}" for d in domains],
            class_names=[self.describe(c) for c in classes],
            task_labels=task_labels,
            seed=seed,
            validation_size=validation_size,
            info=self._info(classes),
        )

    def default_mtil_tasks(self) -> List[WorldTask]:
        """The default world MTIL sequence (>= 4 datasets with own class names)."""
        tasks = [
            WorldTask("world-shapes", target="shape"),
            WorldTask("world-colours", target="colour"),
            WorldTask("world-textures", target="texture"),
            WorldTask("world-objects", target="combination", num_classes=10),
        ]
        if self.num_domains > 1:
            tasks.append(
                WorldTask(f"world-objects-{self.style(1)}", target="combination",
                          domain=1, num_classes=10)
            )
        return tasks

    def mtil_benchmark(
        self,
        *,
        tasks: Optional[Sequence[WorldTask]] = None,
        train_per_class: int = 40,
        test_per_class: int = 20,
        modalities: Sequence[str] = ("image",),
        seed: int = 0,
        label_space: str = "global",
        task_labels: bool = True,
        validation_size: float = 0.0,
        tokenizer: Optional[Callable[[str], torch.Tensor]] = None,
    ) -> MultimodalScenario:
        """An MTIL-style sequence of world "datasets" with their own class names.

        Every sample shows a held-out (task-split) combination, so a model
        pretrained on the reference split meets them zero-shot. Attribute
        datasets (``target="shape"``, ...) name classes by attribute words;
        ``"combination"`` datasets by object descriptions. Experiences carry
        ``dataset_name``, ``class_names`` and prompt ``templates``.
        """
        tasks = self.default_mtil_tasks() if tasks is None else list(tasks)
        task_combos = np.asarray(self.combinations("task"))
        datasets = []
        for ti, task in enumerate(tasks):
            if not isinstance(task, WorldTask):
                raise TypeError(f"tasks must be WorldTask objects, got {task!r}.")
            if task.target not in _TARGET_TEMPLATES:
                raise ValueError(
                    f"WorldTask {task.name!r}: target must be one of {sorted(_TARGET_TEMPLATES)}, "
                    f"got {task.target!r}."
                )
            if not 0 <= task.domain < self.num_domains:
                raise ValueError(
                    f"WorldTask {task.name!r}: domain {task.domain} is not in 0..{self.num_domains - 1}."
                )
            rng = np.random.default_rng(_stable(self.seed, "mtil", seed, task.name))
            if task.target == "combination":
                classes = self.task_classes(task.num_classes or 10, seed=_stable(seed, task.name))
                names = [self.describe(c) for c in classes]

                def draw(k, per, _classes=classes):
                    return [_classes[k]] * per
            else:
                j = FAMILIES.index(task.target)
                n_vals = self.cardinalities[j]
                n_cls = n_vals if task.num_classes is None else int(task.num_classes)
                if not 2 <= n_cls <= n_vals:
                    raise ValueError(
                        f"WorldTask {task.name!r}: num_classes must be in 2..{n_vals}, got {n_cls}."
                    )
                values = sorted(rng.choice(n_vals, size=n_cls, replace=False).tolist())
                names = [self._word(task.target, v, 0) for v in values]

                def draw(k, per, _j=j, _v=values, _rng=rng):
                    pool = task_combos[task_combos[:, _j] == _v[k]]
                    return [tuple(pool[i]) for i in _rng.integers(0, len(pool), per)]

            splits = {}
            for split, per in (("train", train_per_class), ("test", test_per_class)):
                combos, targets = [], []
                for k in range(len(names)):
                    combos.extend(draw(k, per))
                    targets.extend([k] * per)
                samples = self.generate(
                    combos, domains=task.domain, modalities=modalities,
                    tag=f"mtil/{seed}/{ti}/{task.name}/{split}",
                )
                splits[split] = samples.to_dataset(
                    targets, modalities=modalities, tokenizer=tokenizer or self.tokenizer()
                )
            datasets.append(
                TaskDataset(
                    task.name, splits["train"], splits["test"], names,
                    templates=_TARGET_TEMPLATES[task.target],
                )
            )
        return multi_dataset_scenario(
            datasets,
            label_space=label_space,
            task_labels=task_labels,
            seed=seed,
            validation_size=validation_size,
            info={"world_seed": self.seed, "targets": {t.name: t.target for t in tasks}},
        )

    def retrieval_benchmark(
        self,
        *,
        num_phases: int = 5,
        pairs_per_combination: int = 10,
        test_pairs_per_combination: int = 4,
        split: str = "task",
        seed: int = 0,
        tokenizer: Optional[Callable[[str], torch.Tensor]] = None,
    ) -> MultimodalScenario:
        """Instance-incremental image-caption pairs in ``num_phases`` phases."""
        combos = self.combinations(split)
        tok = tokenizer or self.tokenizer()
        train = self.generate(
            [c for c in combos for _ in range(pairs_per_combination)],
            modalities=("image", "text"), tag=f"ret/{seed}/train",
        ).to_pair_dataset(tokenizer=tok)
        test = self.generate(
            [c for c in combos for _ in range(test_pairs_per_combination)],
            modalities=("image", "text"), tag=f"ret/{seed}/test",
        ).to_pair_dataset(tokenizer=tok)
        return retrieval_phases_scenario(
            train, {"world-pairs": test}, num_phases=num_phases, seed=seed, name="world-pairs",
            info={"world_seed": self.seed, "split": split},
        )

    def modality_incremental_benchmark(
        self,
        *,
        schedule: Sequence[Sequence[str]] = (("image",), ("image", "audio"), ("image", "audio", "text")),
        num_classes: int = 10,
        train_per_class: int = 60,
        test_per_class: int = 20,
        seed: int = 0,
        tokenizer: Optional[Callable[[str], torch.Tensor]] = None,
    ) -> MultimodalScenario:
        """Same classes throughout; modalities join in later experiences."""
        modalities = list(dict.fromkeys(m for s in schedule for m in s))
        classes = self.task_classes(num_classes, seed=seed)
        train = self.classification_split(
            classes, per_class=train_per_class, modalities=modalities, tokenizer=tokenizer,
            tag=f"mi/{seed}/train")
        test = self.classification_split(
            classes, per_class=test_per_class, modalities=modalities, tokenizer=tokenizer,
            tag=f"mi/{seed}/test")
        return modality_incremental_scenario(
            train, test, schedule=schedule, seed=seed,
            class_names=[self.describe(c) for c in classes], name="world",
        )


# --------------------------------------------------------------------------
# shape and texture implicit functions (vectorised over [n, S, S])
# --------------------------------------------------------------------------
def _circle(u, v):
    return u * u + v * v <= 1.0


def _square(u, v):
    return np.maximum(np.abs(u), np.abs(v)) <= 0.8


def _triangle(u, v):
    return (v <= 0.7) & (v >= -0.9 + 1.6 * np.abs(u))


def _cross(u, v):
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))


def _diamond(u, v):
    return np.abs(u) + np.abs(v) <= 1.0


def _ring(u, v):
    d = u * u + v * v
    return (d <= 1.0) & (d >= 0.3)


def _bar(u, v):
    return (np.abs(u) <= 0.95) & (np.abs(v) <= 0.35)


def _semicircle(u, v):
    return (u * u + v * v <= 1.0) & (v <= 0.15)


_SHAPE_FN = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
    "diamond": _diamond,
    "ring": _ring,
    "bar": _bar,
    "semicircle": _semicircle,
}


def _striped(gx, gy, p1, p2):
    return np.sin(np.pi * 5 * (gx + gy) * 0.7071 + 2 * np.pi * p1) > 0


def _dotted(gx, gy, p1, p2):
    fx = (gx * 2.5 + p1) % 1.0 - 0.5
    fy = (gy * 2.5 + p2) % 1.0 - 0.5
    return fx * fx + fy * fy < 0.09


def _checkered(gx, gy, p1, p2):
    return (np.floor(gx * 3 + p1) + np.floor(gy * 3 + p2)) % 2 == 0


def _wavy(gx, gy, p1, p2):
    return np.sin(np.pi * 5 * gy + 2.0 * np.sin(np.pi * 3 * gx) + 2 * np.pi * p1) > 0


_TEXTURE_FN = {"striped": _striped, "dotted": _dotted, "checkered": _checkered, "wavy": _wavy}


__all__ = [
    "FAMILIES",
    "WORLD_MODALITIES",
    "STYLES",
    "ProceduralWorld",
    "WorldSamples",
    "WorldTask",
]
