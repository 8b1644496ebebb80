"""The real scikit-learn digits benchmark and the benchmark registry."""

import inspect

import numpy as np
import pytest
import torch

from avalanche_mm.benchmarks import (
    DIGIT_NAMES,
    benchmark_info,
    digits_class_incremental,
    get_benchmark,
    list_benchmarks,
    load_digits_multimodal,
    register_benchmark,
)
from avalanche_mm.benchmarks import registry as registry_module


def test_digits_are_real_and_multimodal():
    from sklearn.datasets import load_digits

    train, test = load_digits_multimodal(seed=0)
    assert len(train) + len(test) == len(load_digits().target) == 1797
    x, y, t = train[0]
    assert x["image"].shape == (1, 8, 8) and x["text"].dtype == torch.long
    assert x["audio"].shape[0] == 33
    # every real image appears exactly once across the split
    raw = torch.from_numpy((load_digits().images / 16.0).astype(np.float32))
    first = torch.stack([train[i][0]["image"][0] for i in range(5)])
    assert all(any(torch.equal(f, r) for r in raw) for f in first)


def test_digits_class_incremental_contract():
    bench = digits_class_incremental(num_experiences=5, seed=1)
    assert bench.class_names == list(DIGIT_NAMES)
    seen = set()
    for tr, te in zip(bench.train_stream, bench.test_stream):
        cls = set(tr.classes_in_this_experience)
        assert len(cls) == 2 and not cls & seen and cls == set(te.classes_in_this_experience)
        seen |= cls
    other = digits_class_incremental(num_experiences=5, seed=2)
    assert other.info["class_order"] != bench.info["class_order"]


def test_digits_caption_noise_and_sonification():
    from avalanche_mm.benchmarks.digits import digits_tokenizer

    tok = digits_tokenizer()
    ids = {DIGIT_NAMES.index(w): tok.word_to_id[w] for w in DIGIT_NAMES}

    def names_label(dataset):
        hits = [ids[int(dataset[i][1])] in dataset[i][0]["text"].tolist() for i in range(200)]
        return np.mean(hits)

    clean, _ = load_digits_multimodal(seed=0, modalities=("text",))
    noisy, _ = load_digits_multimodal(seed=0, modalities=("text",), caption_noise=0.8)
    assert names_label(clean) == 1.0
    assert names_label(noisy) < 0.5
    wave, _ = load_digits_multimodal(seed=0, modalities=("audio",), audio_format="waveform")
    assert wave[0][0]["audio"].shape == (8 * 128,)
    with pytest.raises(ValueError, match="subset"):
        load_digits_multimodal(modalities=("smell",))


def test_registry_lists_every_benchmark_with_signature_and_description():
    entries = list_benchmarks()
    for name in (
        "world-class-incremental", "world-task-incremental", "world-domain-incremental",
        "world-mtil", "world-retrieval", "world-modality-incremental",
        "digits-class-incremental", "mtil", "cifar100-clip", "coco-retrieval",
        "flickr30k-retrieval", "avcil-ave", "avcil-kinetics-sounds", "avcil-vggsound100",
        "seq-vggsound", "dom-vggsound", "gcil-vggsound", "uestc-mmea-cl",
    ):
        assert name in entries, name
        entry = entries[name]
        assert entry.description and "\n" not in entry.description
        assert entry.signature().startswith(name + "(")
    assert "root" in benchmark_info("mtil").required


def test_get_benchmark_builds_and_validates_parameters():
    bench = get_benchmark(
        "world-class-incremental", num_classes=4, num_experiences=2, train_per_class=3,
        test_per_class=2, image_size=16,
    )
    assert len(bench.train_stream) == 2
    with pytest.raises(TypeError, match="has no parameters"):
        get_benchmark("world-class-incremental", num_clases=4)
    with pytest.raises(TypeError, match="needs parameters"):
        get_benchmark("mtil")
    with pytest.raises(KeyError, match="registered benchmarks"):
        get_benchmark("imagenet-r")


def test_register_benchmark_decorator(monkeypatch):
    monkeypatch.setattr(registry_module.BENCHMARKS, "_entries", dict(registry_module.BENCHMARKS._entries))

    @register_benchmark("toy-for-test")
    def toy(*, size: int = 3, seed: int = 0):
        """A toy benchmark.

        More text.
        """
        return ("toy", size, seed)

    assert get_benchmark("toy-for-test", size=5) == ("toy", 5, 0)
    assert list_benchmarks()["toy-for-test"].description == "A toy benchmark."
    assert list_benchmarks()["toy-for-test"].parameters == {"size": 3, "seed": 0}
    with pytest.raises(ValueError, match="already registered"):
        register_benchmark("toy-for-test")(lambda *, a=1: a)
    with pytest.raises(TypeError, match="keyword-only"):
        register_benchmark("bad")(lambda a, /: a)
    assert inspect.signature(toy).parameters["size"].default == 3
