import multiprocessing as mp
import os
import time

import pytest
import torch
from torch import nn

from avalanche_mm.data import make_multimodal_dataset
from avalanche_mm.models import (
    FeatureCachePlugin,
    FrozenFeatureCache,
    LinearProbe,
    ZeroShotClassifier,
    dataset_fingerprint,
    module_fingerprint,
)


class CountingEncoder(nn.Module):
    """A frozen 'encoder' that counts the samples it encodes."""

    def __init__(self, seed=0, delay=0.0):
        super().__init__()
        torch.manual_seed(seed)
        self.proj = nn.Linear(12, 4)
        self.encoded = 0
        self.delay = delay

    def encode(self, x):
        self.encoded += len(x)
        if self.delay:
            time.sleep(self.delay)
        return self.proj(x.flatten(1))


def _dataset(n=10, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 2, 2, generator=g)
    return make_multimodal_dataset(
        {"image": images, "audio": torch.randn(n, 5, generator=g)},
        [i % 3 for i in range(n)],
        task_labels=[i % 2 for i in range(n)],
        eval_transforms={"image": lambda t: t * scale},
    )


def test_computed_once_then_served_from_memory_and_disk(tmp_path):
    enc, data = CountingEncoder(), _dataset()
    cache = FrozenFeatureCache(root=tmp_path)
    f1 = cache.get_or_compute(enc.encode, data, batch_size=4)
    assert f1.shape == (10, 4) and enc.encoded == 10
    with torch.no_grad():
        expected = enc.proj(torch.stack([data.eval()[i][0]["image"] for i in range(10)]).flatten(1))
    assert torch.allclose(f1, expected, atol=1e-6)
    f2 = cache.get_or_compute(enc.encode, data)
    assert enc.encoded == 10 and cache.stats["memory_hits"] == 1
    # a new run: a fresh cache object on the same folder reads the file
    again = FrozenFeatureCache(root=tmp_path)
    f3 = again.get_or_compute(enc.encode, data)
    assert enc.encoded == 10 and again.stats["disk_hits"] == 1
    assert torch.equal(f1, f2) and torch.equal(f1, f3)
    files = list(tmp_path.rglob("*.pt"))
    assert len(files) == 1 and not list(tmp_path.rglob("*.tmp"))


def test_key_changes_with_weights_data_and_transform(tmp_path):
    enc, data = CountingEncoder(), _dataset()
    cache = FrozenFeatureCache(root=tmp_path, max_memory_entries=0)
    key = cache.make_key(enc.encode, data)
    assert cache.make_key(enc.encode, data) == key
    with torch.no_grad():
        enc.proj.bias.add_(1.0)
    assert cache.make_key(enc.encode, data) != key  # weights
    key_w = cache.make_key(enc.encode, data)
    assert cache.make_key(enc.encode, _dataset(seed=1)) != key_w  # data
    assert cache.make_key(enc.encode, _dataset(scale=2.0)) != key_w  # eval transform
    assert cache.make_key(enc.encode, data, extra_key="flag") != key_w
    assert cache.make_key(enc.encode, data, dataset_key="cifar-train") == cache.make_key(
        enc.encode, _dataset(seed=5), dataset_key="cifar-train"
    )
    cache.get_or_compute(enc.encode, data)
    with torch.no_grad():
        enc.proj.weight.mul_(2.0)
    cache.get_or_compute(enc.encode, data)
    assert enc.encoded == 20 and cache.stats["computed"] == 2
    assert module_fingerprint(enc) != module_fingerprint(CountingEncoder(seed=1))
    assert dataset_fingerprint(data) == dataset_fingerprint(_dataset())


def _worker(root, out_dir, rank):
    enc = CountingEncoder(delay=0.3)
    feats = FrozenFeatureCache(root=root).get_or_compute(enc.encode, _dataset(), batch_size=5)
    torch.save({"feats": feats, "encoded": enc.encoded}, os.path.join(out_dir, f"{rank}.pt"))


def test_concurrent_runs_compute_once_and_agree(tmp_path):
    ctx = mp.get_context("fork")
    root, out = tmp_path / "cache", tmp_path / "out"
    out.mkdir()
    procs = [ctx.Process(target=_worker, args=(str(root), str(out), r)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    results = [torch.load(out / f"{r}.pt") for r in range(2)]
    assert sorted(r["encoded"] for r in results) == [0, 10]  # one computed, one waited and read
    assert torch.equal(results[0]["feats"], results[1]["feats"])
    assert len(list(root.rglob("*.pt"))) == 1 and not list(root.rglob("*.tmp"))


def test_feature_dataset_keeps_targets_tasks_and_chosen_modalities(tmp_path):
    enc, data = CountingEncoder(), _dataset()
    cache = FrozenFeatureCache(root=tmp_path)
    feats = cache.get_or_compute(enc.encode, data)
    fds = cache.feature_dataset(data, feats, keep=("audio",))
    assert list(fds.targets) == list(data.targets)
    assert list(fds.targets_task_labels) == list(data.targets_task_labels)
    x, y, t = fds[3]
    assert set(x) == {"image_features", "audio"}
    assert torch.equal(x["image_features"], feats[3]) and torch.equal(x["audio"], data[3][0]["audio"])
    batch, ys, ts = fds.collate_fn([fds[i] for i in range(4)])
    assert batch["image_features"].shape == (4, 4)
    probe = LinearProbe(encoder=enc.encode, in_features=4, num_classes=3)
    with torch.no_grad():
        raw = data.eval().collate_fn([data.eval()[i] for i in range(4)])[0]
        assert torch.allclose(probe(batch), probe(raw), atol=1e-5)
    assert all(not p.requires_grad for p in enc.parameters())
    with pytest.raises(ValueError, match="feature rows"):
        cache.feature_dataset(data, feats[:3])


def test_zero_shot_classifier_on_cached_backbone_features(backbone, tmp_path):
    g = torch.Generator().manual_seed(0)
    data = make_multimodal_dataset({"image": torch.randn(6, 3, 32, 32, generator=g)}, [0, 1, 2, 0, 1, 2])
    cache = FrozenFeatureCache(root=tmp_path)
    feats = cache.get_or_compute(backbone.encode_image, data)
    fds = cache.feature_dataset(data, feats)
    clf = ZeroShotClassifier(backbone=backbone, class_names=["dog", "cat", "tree"]).eval()
    batch = fds.collate_fn([fds[i] for i in range(6)])[0]
    raw = data.collate_fn([data[i] for i in range(6)])[0]
    with torch.no_grad():
        assert torch.allclose(clf(batch), clf(raw), atol=1e-4)


def test_plugin_with_the_multimodal_naive_strategy(tmp_path):
    from avalanche_mm.benchmarks import class_incremental_scenario
    from avalanche_mm.strategies import Naive

    enc = CountingEncoder()
    train, test = _dataset(n=12), _dataset(n=6, seed=3)
    scenario = class_incremental_scenario(train, test, num_experiences=3, class_order=[0, 1, 2])
    probe = LinearProbe(encoder=enc.encode, in_features=4, num_classes=3)
    cache = FrozenFeatureCache(root=tmp_path)
    strategy = Naive(
        model=probe,
        optimizer=torch.optim.SGD(probe.head.parameters(), lr=0.1),
        train_mb_size=4,
        train_epochs=3,
        plugins=[FeatureCachePlugin(cache=cache, encoder=enc.encode)],
        evaluator=None,
    )
    head_before = probe.head.weight.detach().clone()
    for exp in scenario.train_stream:
        strategy.train(exp)
    strategy.eval(scenario.test_stream)
    assert not torch.equal(head_before, probe.head.weight)
    # each sample encoded once, despite 3 epochs per experience
    assert enc.encoded == len(train) + len(test)
    strategy.eval(scenario.test_stream)  # a second evaluation reads the cache
    assert enc.encoded == len(train) + len(test)
    assert cache.stats["memory_hits"] == len(scenario.test_stream)


@pytest.mark.parametrize("damage", ["short", "truncated", "foreign"])
def test_damaged_cache_file_is_recomputed_with_a_warning(tmp_path, damage):
    enc, data = CountingEncoder(), _dataset()
    cache = FrozenFeatureCache(root=tmp_path, max_memory_entries=0)
    good = cache.get_or_compute(enc.encode, data)
    path = cache.path_for(cache.make_key(enc.encode, data))
    blob = torch.load(path, weights_only=True)
    if damage == "short":  # 3 rows for a 10-sample dataset
        blob["features"] = blob["features"][:3]
        blob["meta"]["n"] = 3
        torch.save(blob, path)
    elif damage == "truncated":
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    else:  # a valid file written for another key
        blob["meta"]["key"] = "0" * 40
        torch.save(blob, path)
    with pytest.warns(UserWarning, match="ignoring .* recomputing"):
        again = cache.get_or_compute(enc.encode, data)
    assert torch.equal(again, good) and enc.encoded == 20 and cache.stats["invalid"] == 1
    assert torch.equal(FrozenFeatureCache(root=tmp_path).get_or_compute(enc.encode, data), good)  # overwritten
    assert enc.encoded == 20
