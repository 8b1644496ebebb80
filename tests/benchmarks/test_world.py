"""The procedural world: determinism, content, benchmarks and zero-shot transfer."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from avalanche_mm.benchmarks import FAMILIES, ProceduralWorld, WorldTask

SMALL = dict(image_size=16, shapes=4, colours=4, textures=2, sizes=2)


def test_combination_split_is_disjoint_covering_and_seeded():
    w = ProceduralWorld(seed=3, **SMALL)
    ref, task = set(w.combinations("reference")), set(w.combinations("task"))
    assert not ref & task and len(ref | task) == 4 * 4 * 2 * 2
    for j, k in enumerate(w.cardinalities):  # every value seen in both splits
        assert {c[j] for c in ref} == set(range(k)) == {c[j] for c in task}
    assert ProceduralWorld(seed=3, **SMALL).combinations("task") == w.combinations("task")
    assert ProceduralWorld(seed=4, **SMALL).combinations("task") != w.combinations("task")


def test_generation_is_deterministic_and_shaped():
    w = ProceduralWorld(seed=0, num_domains=2, **SMALL)
    combos = w.combinations("all")[:12]
    mods = ("image", "text", "audio", "sensor")
    a = w.generate(combos, modalities=mods, domains=[0, 1] * 6, tag="x")
    b = w.generate(combos, modalities=mods, domains=[0, 1] * 6, tag="x")
    c = w.generate(combos, modalities=mods, domains=[0, 1] * 6, tag="y")
    for m in ("image", "audio", "sensor"):
        assert torch.equal(a.modalities[m], b.modalities[m])
        assert not torch.equal(a.modalities[m], c.modalities[m])
    assert a.captions == b.captions
    assert a.modalities["image"].shape == (12, 3, 16, 16)
    assert 0 <= float(a.modalities["image"].min()) and float(a.modalities["image"].max()) <= 1
    assert a.modalities["audio"].shape == (12, 33, 33)
    assert a.modalities["sensor"].shape == (12, 3, 64)
    waveform = ProceduralWorld(seed=0, audio_format="waveform", audio_length=512, **SMALL)
    assert waveform.generate(combos, modalities=("audio",)).modalities["audio"].shape == (12, 512)


def test_captions_are_compositional_and_domains_shift_vocabulary():
    w = ProceduralWorld(seed=0, num_domains=2, **SMALL)
    combo = w.combinations("task")[0]
    words = w.describe(combo).split()
    assert len(words) == 4
    s0 = w.generate([combo] * 5, modalities=("text",), domains=0)
    assert all(w.describe(combo) in c for c in s0.captions)
    s1 = w.generate([combo] * 5, modalities=("text",), domains=1)
    assert all(w.describe(combo, domain=1) in c for c in s1.captions)
    assert set(w.describe(combo, domain=1).split()).isdisjoint(words)
    tok = w.tokenizer()
    assert all(int(t) != tok.UNK for c in s0.captions + s1.captions for t in tok(c))


def test_text_noise_knob_replaces_attribute_words():
    clean = ProceduralWorld(seed=0, **SMALL)
    noisy = ProceduralWorld(seed=0, noise={"text": 1.0}, **SMALL)
    combos = clean.combinations("task")[:1] * 40
    desc = clean.describe(combos[0])
    assert all(desc in c for c in clean.generate(combos, modalities=("text",)).captions)
    wrong = [desc not in c for c in noisy.generate(combos, modalities=("text",)).captions]
    assert np.mean(wrong) > 0.5


def test_modality_attributes_make_a_modality_label_irrelevant():
    # audio encodes only the size: two objects differing in shape sound alike
    w = ProceduralWorld(seed=0, noise={"audio": 0.0}, modality_attributes={"audio": ("size",)},
                        **SMALL)
    a, b = (0, 0, 0, 0), (0, 0, 0, 1)
    sa = w.generate([a] * 60, modalities=("audio",), tag="t").modalities["audio"]
    sb = w.generate([b] * 60, modalities=("audio",), tag="t").modalities["audio"]
    assert torch.allclose(sa.mean(0), sb.mean(0), atol=0.15)
    full = ProceduralWorld(seed=0, noise={"audio": 0.0}, **SMALL)
    fa = full.generate([a] * 60, modalities=("audio",), tag="t").modalities["audio"]
    fb = full.generate([b] * 60, modalities=("audio",), tag="t").modalities["audio"]
    assert (fa.mean(0) - fb.mean(0)).abs().max() > 0.5


def test_invalid_world_parameters_are_explained():
    with pytest.raises(ValueError, match="between 2 and 8"):
        ProceduralWorld(shapes=9)
    with pytest.raises(ValueError, match="unknown"):
        ProceduralWorld(colours=["red", "mauve"])
    with pytest.raises(KeyError, match="unknown modality"):
        ProceduralWorld(noise={"smell": 0.1})
    with pytest.raises(ValueError, match="families"):
        ProceduralWorld(modality_attributes={"audio": ("weight",)})
    w = ProceduralWorld(**SMALL)
    with pytest.raises(ValueError, match="held-out combinations"):
        w.task_classes(1000)
    with pytest.raises(ValueError, match="domains must be in"):
        w.generate(w.combinations("task")[:2], domains=3)
    with pytest.raises(ValueError, match="within"):
        w.describe((9, 0, 0, 0))


def test_world_class_incremental_uses_held_out_combinations():
    w = ProceduralWorld(seed=0, **SMALL)
    bench = w.class_incremental_benchmark(
        num_classes=6, num_experiences=3, train_per_class=4, test_per_class=2,
        modalities=("image", "text", "audio", "sensor"), missing_rates={"audio": 0.5},
    )
    task_names = {w.describe(c) for c in w.combinations("task")}
    assert set(bench.class_names) <= task_names
    assert bench.modalities == ("image", "text", "audio", "sensor")
    assert [a["shape"] for a in bench.info["class_attributes"]] == [
        n.split()[-1] for n in bench.class_names
    ]
    for e in bench.train_stream:
        assert len(e.classes_in_this_experience) == 2
        assert e.missing_rates == {"audio": 0.5}


def test_world_mtil_domain_retrieval_and_modality_incremental():
    w = ProceduralWorld(seed=0, num_domains=2, **SMALL)
    mtil = w.mtil_benchmark(train_per_class=3, test_per_class=2)
    names = [e.dataset_name for e in mtil.test_stream]
    assert len(names) >= 4 and len(set(names)) == len(names)
    assert mtil.test_stream[0].class_names == list(w.values["shape"])
    assert all(e.templates and "{}" in e.templates[0] for e in mtil.test_stream)
    custom = w.mtil_benchmark(
        tasks=[WorldTask("s", target="size"), WorldTask("o", target="combination", num_classes=3)],
        train_per_class=2, test_per_class=2, label_space="local",
    )
    assert [len(e.class_names) for e in custom.test_stream] == [2, 3]
    with pytest.raises(ValueError, match="target"):
        w.mtil_benchmark(tasks=[WorldTask("x", target="weight")])

    dom = w.domain_incremental_benchmark(num_classes=4, train_per_class=2, test_per_class=2)
    assert [e.dataset_name for e in dom.train_stream] == ["plain-0", "noisy-1"]
    assert all(set(e.classes_in_this_experience) == {0, 1, 2, 3} for e in dom.train_stream)

    ret = w.retrieval_benchmark(num_phases=3, pairs_per_combination=2, test_pairs_per_combination=1)
    assert len(ret.train_stream) == 3 and ret.modalities == ("image", "text")

    mi = w.modality_incremental_benchmark(num_classes=3, train_per_class=6, test_per_class=2)
    assert [e.modalities for e in mi.train_stream] == [
        ("image",), ("image", "audio"), ("image", "audio", "text")
    ]


def test_reference_pairs_and_raw_captions():
    w = ProceduralWorld(seed=0, **SMALL)
    pairs = w.reference_pairs(per_combination=2)
    raw = w.reference_samples(per_combination=2)
    assert len(pairs) == len(raw) == 2 * len(w.combinations("reference"))
    x, pid, _ = pairs[3]
    assert pid == 3 and x["text"].dtype == torch.long
    assert raw.descriptions[0] == w.describe(w.combinations("reference")[0])


class _TinyCLIP(nn.Module):
    def __init__(self, vocab_size, dim=32):
        super().__init__()
        self.image = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(), nn.Linear(64, dim),
        )
        self.text = nn.EmbeddingBag(vocab_size, dim, mode="mean", padding_idx=0)
        self.log_scale = nn.Parameter(torch.tensor(2.3))

    def encode_image(self, x):
        return F.normalize(self.image(x), dim=-1)

    def encode_text(self, ids):
        return F.normalize(self.text(ids), dim=-1)


def _pad(seqs):
    out = torch.zeros(len(seqs), max(len(s) for s in seqs), dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


def test_tiny_clip_pretrained_on_reference_split_is_zero_shot_on_held_out_combinations():
    torch.manual_seed(0)
    w = ProceduralWorld(seed=0, noise={"image": 0.03}, **SMALL)
    tok = w.tokenizer()
    ref = w.reference_samples(per_combination=40)
    images, texts = ref.modalities["image"], _pad([tok(c) for c in ref.captions])
    model = _TinyCLIP(tok.vocab_size)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):  # a few seconds on one CPU thread
        b = torch.randint(0, len(images), (128,))
        logits = model.log_scale.exp() * model.encode_image(images[b]) @ model.encode_text(
            texts[b]
        ).T
        target = torch.arange(len(b))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    # zero-shot on 10 combinations never seen in pretraining, prompts from class names
    bench = w.class_incremental_benchmark(
        num_classes=10, num_experiences=1, train_per_class=1, test_per_class=20,
        modalities=("image",),
    )
    assert not {tuple(a.values()) for a in bench.info["class_attributes"]} & {
        tuple(w.attributes_of(c).values()) for c in w.combinations("reference")
    }
    prompts = _pad([tok(f"a photo of a {n}") for n in bench.class_names])
    test = bench.test_stream[0].dataset.eval()
    x = torch.stack([test[i][0]["image"] for i in range(len(test))])
    y = torch.tensor([test[i][1] for i in range(len(test))])
    with torch.no_grad():
        pred = (model.encode_image(x) @ model.encode_text(prompts).T).argmax(1)
    accuracy = (pred == y).float().mean().item()
    print(f"zero-shot accuracy on held-out combinations: {accuracy:.3f} (chance 0.100)")
    assert accuracy > 0.35  # chance is 0.10


def test_families_are_the_documented_ones():
    assert FAMILIES == ("size", "colour", "texture", "shape")
