"""Mechanism tests of the dict-aware EWC, MAS, GEM, A-GEM, DER, ER-ACE and iCaRL.

Each test shows the mechanism acts on multimodal batches (variable-length
text, missing audio), and the ``*_stock_*`` tests show Avalanche's own version
fails on the same input, so they would fail if our layer were removed.
The stock strategies are combined with ``MultimodalTemplateMixin`` so that the
failure comes from the plugin, not from the template (tested elsewhere).
"""

from types import SimpleNamespace

import pytest
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.benchmarks.utils import DataAttribute
from avalanche.benchmarks.utils.classification_dataset import (
    TaskAwareSupervisedClassificationDataset,
)
from avalanche.core import SupervisedPlugin
from avalanche.training import supervised as stock
from avalanche.training import plugins as stock_plugins

import avalanche_mm.strategies as mm
from avalanche_mm.benchmarks.toy import ToyFusionNet, make_toy_datasets, toy_benchmark
from avalanche_mm.data import MultimodalBatch, MultimodalTensorDataset
from avalanche_mm.strategies import plugins as ours

N_CLASSES = 4


# --------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench():
    return toy_benchmark(n_experiences=2, n_classes=N_CLASSES, n_per_class=6, missing_audio_rate=0.25)


@pytest.fixture(scope="module")
def toy_data():
    train, _, tok = make_toy_datasets(n_classes=N_CLASSES, n_per_class=4, missing_audio_rate=0.25)
    return train, tok.vocab_size


class PlainNet(torch.nn.Module):
    """A model over *plain dict* batches {"image": [B,3,4,4], "audio": [B,1,8]}."""

    def __init__(self):
        super().__init__()
        self.image = torch.nn.Linear(48, N_CLASSES)
        self.audio = torch.nn.Linear(8, N_CLASSES)

    def forward(self, x):
        return self.image(x["image"].flatten(1)) + self.audio(x["audio"].flatten(1))


@pytest.fixture(scope="module")
def plain_data():
    """A task-aware dataset whose collate (PyTorch's default) yields plain dicts."""
    n = 8
    g = torch.Generator().manual_seed(1)
    targets = [i % N_CLASSES for i in range(n)]
    base = MultimodalTensorDataset(
        {"image": torch.randn(n, 3, 4, 4, generator=g), "audio": torch.randn(n, 1, 8, generator=g)},
        targets,
    )
    return TaskAwareSupervisedClassificationDataset(
        [base],
        data_attributes=[
            DataAttribute(targets, "targets"),
            DataAttribute([0] * n, "targets_task_labels", use_in_getitem=True),
        ],
    )


def fake_strategy(model, dataset, exp_counter=1):
    """The attributes plugins read from a strategy, without a training loop."""
    return SimpleNamespace(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        device=torch.device("cpu"),
        clock=SimpleNamespace(train_exp_counter=exp_counter),
        _criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=4,
        eval_mb_size=8,
        experience=SimpleNamespace(dataset=dataset),
        default_collate_fn=None,
    )


def toy_model(vocab):
    return ToyFusionNet(n_classes=N_CLASSES, vocab_size=vocab, hidden=16)


def build(cls, bench, plugins=(), **kw):
    model = toy_model(bench.tokenizer.vocab_size)
    return cls(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=6,
        eval_mb_size=24,
        evaluator=None,
        plugins=list(plugins),
        **kw,
    )


def with_mixin(stock_cls):
    return type("Stock" + stock_cls.__name__, (mm.MultimodalTemplateMixin, stock_cls), {})


def grads(model):
    return torch.cat(
        [p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in model.parameters()]
    )


def set_grads(model, flat):
    i = 0
    for p in model.parameters():
        p.grad = flat[i : i + p.numel()].view_as(p).clone()
        i += p.numel()


class LossSpy(SupervisedPlugin):
    """Records (total loss, plain criterion loss, experience) at each update."""

    def __init__(self):
        super().__init__()
        self.records = []

    def before_update(self, strategy, **kwargs):
        ce = strategy._criterion(strategy.mb_output, strategy.mb_y)
        self.records.append(
            (float(strategy.loss), float(ce), strategy.clock.train_exp_counter)
        )


class InputSpy(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.seen = []

    def after_forward(self, strategy, **kwargs):
        if strategy.is_training:
            self.seen.append(
                dict(
                    exp=strategy.clock.train_exp_counter,
                    x=strategy.mb_x,
                    y=strategy.mb_y.clone(),
                    buffer_x=getattr(strategy, "mb_buffer_x", None),
                    buffer_y=getattr(strategy, "mb_buffer_y", None),
                    buffer_out=getattr(strategy, "mb_buffer_out", None),
                )
            )


# --------------------------------------------------------------------------
# EWC and MAS
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,kw,plugin_attr",
    [("EWC", {"ewc_lambda": 50.0}, "ewc_plugin"), ("MAS", {"lambda_reg": 50.0}, "mas_plugin")],
)
def test_regulariser_penalty_is_active_after_first_experience(bench, name, kw, plugin_attr):
    spy = LossSpy()
    s = build(getattr(mm, name), bench, plugins=[spy], **kw)
    for exp in bench.train_stream:
        s.train(exp)
    first = [r for r in spy.records if r[2] == 0]
    second = [r for r in spy.records if r[2] == 1]
    assert first and second
    assert all(abs(total - ce) < 1e-6 for total, ce, _ in first)  # no penalty on exp 0
    assert all(total > ce + 1e-9 for total, ce, _ in second[1:])  # penalty once weights move

    plugin = getattr(s, plugin_attr)
    imp = plugin.importances[0] if name == "EWC" else plugin.importance
    # importances come from the multimodal forward: every modality contributes
    for pname in ("embed.weight", "heads.text.weight", "heads.audio.weight", "heads.image.weight"):
        assert float(imp[pname].data.abs().sum()) > 0, pname


@pytest.mark.parametrize("name", ["EWC", "MAS"])
def test_regulariser_penalty_changes_the_gradient(toy_data, name):
    data, vocab = toy_data
    model = toy_model(vocab)
    fake = fake_strategy(model, data, exp_counter=0)
    if name == "EWC":
        plugin = ours.EWCPlugin(ewc_lambda=100.0)
    else:
        plugin = ours.MASPlugin(lambda_reg=100.0)
    plugin.after_training_exp(fake)  # importances on experience 0 (dict batches)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    fake.clock.train_exp_counter = 1
    batch = next(iter(ours.make_plugin_loader(data, batch_size=8)))

    def gradient(with_penalty):
        model.zero_grad()
        fake.loss = torch.nn.functional.cross_entropy(model(batch[0]), batch[1])
        if with_penalty:
            plugin.before_backward(fake)
        fake.loss.backward()
        return grads(model)

    plain, penalised = gradient(False), gradient(True)
    assert not torch.allclose(plain, penalised)


def test_stock_ewc_fails_on_plain_dict_batches_ours_computes_importances(plain_data):
    model = PlainNet()
    args = (model, torch.nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1),
            plain_data, "cpu", 4)
    with pytest.raises(AttributeError, match="'dict' object has no attribute 'to'"):
        stock_plugins.EWCPlugin(ewc_lambda=1.0).compute_importances(*args)
    imp = ours.EWCPlugin(ewc_lambda=1.0).compute_importances(*args)
    assert float(imp["image.weight"].data.sum()) > 0 and float(imp["audio.weight"].data.sum()) > 0


def test_stock_mas_fails_on_plain_dict_batches_ours_computes_importances(plain_data):
    fake = fake_strategy(PlainNet(), plain_data)
    with pytest.raises(AttributeError, match="'dict' object has no attribute 'to'"):
        stock_plugins.MASPlugin()._get_importance(fake)
    imp = ours.MASPlugin()._get_importance(fake)
    assert float(imp["audio.weight"].data.sum()) > 0


# --------------------------------------------------------------------------
# GEM and A-GEM
# --------------------------------------------------------------------------
def test_gem_memory_is_a_multimodal_batch_and_projection_fixes_conflicts(toy_data):
    data, vocab = toy_data
    model = toy_model(vocab)
    plugin = ours.GEMPlugin(patterns_per_experience=6, memory_strength=0.5)
    plugin.update_memory(data, 0, batch_size=4)  # 4 + 2 rows, re-padded
    mem = plugin.memory_x[0]
    assert isinstance(mem, MultimodalBatch) and len(mem) == 6
    assert len(plugin.memory_y[0]) == 6 and len(plugin.memory_tid[0]) == 6
    assert "text" in mem.lengths and mem["text"].shape[1] == int(mem.lengths["text"].max())

    fake = fake_strategy(model, data, exp_counter=1)
    plugin.before_training_iteration(fake)  # reference gradient on the dict memory
    G = plugin.G
    assert G.shape == (1, sum(p.numel() for p in model.parameters())) and G.abs().sum() > 0

    conflicting = -G[0] + 0.01 * torch.randn_like(G[0])
    set_grads(model, conflicting)
    assert float(G[0] @ conflicting) < 0
    plugin.after_backward(fake)
    projected = grads(model)
    assert not torch.allclose(projected, conflicting)
    assert float(G[0] @ projected) >= -1e-3 * float(G[0] @ G[0])


def test_stock_gem_fails_on_multimodal_batches_ours_trains(bench):
    with pytest.raises(AttributeError, match="MultimodalBatch"):
        s = build(with_mixin(stock.GEM), bench, patterns_per_exp=6)
        s.train(bench.train_stream[0])
    s = build(mm.GEM, bench, patterns_per_exp=6)
    for exp in bench.train_stream:
        s.train(exp)
    assert isinstance(s.gem_plugin.memory_x[1], MultimodalBatch)


def test_agem_reference_batch_is_multimodal_and_projection_removes_conflict(toy_data):
    data, vocab = toy_data
    model = toy_model(vocab)
    plugin = ours.AGEMPlugin(patterns_per_experience=6, sample_size=4)
    plugin.update_memory(data)
    assert len(plugin.buffers) == 1 and len(plugin.buffers[0]) == 6
    sample = plugin.sample_from_memory()
    assert isinstance(sample[0], MultimodalBatch) and len(sample[0]) == 4

    fake = fake_strategy(model, data, exp_counter=1)
    plugin.before_training_iteration(fake)
    ref = plugin.reference_gradients
    assert ref.abs().sum() > 0
    conflicting = -ref + 0.01 * torch.randn_like(ref)
    set_grads(model, conflicting)
    plugin.after_backward(fake)
    projected = grads(model)
    assert not torch.allclose(projected, conflicting)
    assert abs(float(projected @ ref)) <= 1e-4 * float(ref @ ref)  # projected onto ref's normal plane


def test_stock_agem_fails_on_plain_dict_batches_ours_works(plain_data):
    fake = fake_strategy(PlainNet(), plain_data)
    theirs = stock_plugins.AGEMPlugin(patterns_per_experience=4, sample_size=4)
    theirs.update_memory(plain_data)
    with pytest.raises(AttributeError, match="'dict' object has no attribute 'to'"):
        theirs.before_training_iteration(fake)
    mine = ours.AGEMPlugin(patterns_per_experience=4, sample_size=4)
    mine.update_memory(plain_data)
    mine.before_training_iteration(fake)
    assert mine.reference_gradients.abs().sum() > 0


def test_agem_rejects_bad_sizes():
    with pytest.raises(ValueError, match="sample_size"):
        ours.AGEMPlugin(patterns_per_experience=4, sample_size=0)


# --------------------------------------------------------------------------
# DER
# --------------------------------------------------------------------------
def test_der_buffer_holds_logits_and_replays_dict_batches(bench):
    spy = InputSpy()
    s = build(mm.DER, bench, plugins=[spy], mem_size=8, batch_size_mem=4)
    s.train(bench.train_stream[0])

    buffer = s.storage_policy.buffer
    assert len(buffer) == 8
    row = buffer[0]
    assert len(row) == 4 and isinstance(row[0], dict) and row[3].shape == (N_CLASSES,)
    # the stored logits are the model's outputs on those (collated, padded) rows
    x, y, t, logits = buffer.collate_fn([buffer[i] for i in range(len(buffer))])
    assert isinstance(x, MultimodalBatch)
    s.model.eval()
    with torch.no_grad():
        assert torch.allclose(s.model(x), logits, atol=1e-5)
    s.model.train()

    s.train(bench.train_stream[1])
    replayed = [r for r in spy.seen if r["exp"] == 1]
    assert replayed
    exp0_classes = set(bench.train_stream[0].classes_in_this_experience)
    for r in replayed:
        assert isinstance(r["x"], MultimodalBatch) and len(r["x"]) == len(r["y"]) > 4
        assert set(r["y"][:4].tolist()) <= exp0_classes  # the first 4 rows are replayed
    assert s.batch_logits.shape == (4, N_CLASSES)


def test_stock_der_fails_on_multimodal_data(bench):
    s = build(with_mixin(stock.DER), bench, mem_size=8, batch_size_mem=4)
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        s.train(bench.train_stream[0])


# --------------------------------------------------------------------------
# ER-ACE
# --------------------------------------------------------------------------
def test_er_ace_replays_collated_buffer_batches(bench):
    spy = InputSpy()
    s = build(mm.ER_ACE, bench, plugins=[spy], mem_size=8, batch_size_mem=4)
    for exp in bench.train_stream:
        s.train(exp)
    first = [r for r in spy.seen if r["exp"] == 0]
    second = [r for r in spy.seen if r["exp"] == 1]
    assert first and all(r["buffer_x"] is None for r in first)
    assert second
    seen_buffer_classes = set()
    for r in second:
        assert isinstance(r["buffer_x"], MultimodalBatch) and len(r["buffer_x"]) == 4
        assert r["buffer_out"].shape == (4, N_CLASSES)
        seen_buffer_classes |= set(r["buffer_y"].tolist())
    assert seen_buffer_classes & set(bench.train_stream[0].classes_in_this_experience)


def test_replay_iterator_gives_plain_dict_batches_a_to_method(plain_data):
    # ER-ACE's training loop calls mb_buffer_x.to(device) on the replayed input
    it = ours.device_cycle(ours.make_plugin_loader(plain_data, batch_size=4), "cpu")
    for _ in range(3):  # cycles past the end of the 2-batch loader
        x, y, t = next(it)
        moved = x.to("cpu")
        assert isinstance(moved, dict) and set(moved) == {"image", "audio"} and len(y) == 4
    empty = ours.device_cycle(
        ours.make_plugin_loader(plain_data, batch_size=16, drop_last=True), "cpu"
    )
    with pytest.raises(RuntimeError, match="produced no batch"):
        next(empty)


def test_stock_er_ace_fails_on_multimodal_data(bench):
    s = build(with_mixin(stock.ER_ACE), bench, mem_size=8, batch_size_mem=4)
    s.train(bench.train_stream[0])  # no replay yet
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        s.train(bench.train_stream[1])


# --------------------------------------------------------------------------
# iCaRL
# --------------------------------------------------------------------------
class Features(torch.nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.net = ToyFusionNet(n_classes=8, vocab_size=vocab, hidden=16)

    def forward(self, x):
        return self.net(x)


def build_icarl(cls, vocab, plugins=(), memory_size=8, buffer_transform=None):
    fe, clf = Features(vocab), torch.nn.Linear(8, N_CLASSES)
    return cls(
        feature_extractor=fe,
        classifier=clf,
        optimizer=torch.optim.SGD(list(fe.parameters()) + list(clf.parameters()), lr=0.05),
        memory_size=memory_size,
        buffer_transform=buffer_transform,
        fixed_memory=True,
        train_mb_size=6,
        eval_mb_size=24,
        evaluator=None,
        plugins=list(plugins),
    )


def test_herding_order_hand_made_case():
    # unit feature columns; iCaRL herding: argmax <w, d>, then w += mu - d
    D = torch.tensor([[1.0, 0.0, 0.8, 0.28], [0.0, 1.0, 0.6, 0.96]])
    assert ours.herding_order(D, 4).tolist() == [3.0, 4.0, 1.0, 2.0]
    assert ours.herding_order(D, 2).tolist() == [0.0, 0.0, 1.0, 2.0]


def test_flip_images_flips_only_image_modalities(toy_data):
    data, _ = toy_data
    x = next(iter(ours.make_plugin_loader(data, batch_size=4)))[0]
    flipped = ours.flip_images(x)
    assert isinstance(flipped, MultimodalBatch)
    assert torch.equal(flipped["image"], torch.flip(x["image"], [3]))
    assert torch.equal(flipped["text"], x["text"]) and torch.equal(flipped["audio"], x["audio"])
    assert torch.equal(flipped.lengths["text"], x.lengths["text"])
    assert ours.flip_images({"text": torch.ones(2, 3)}) is None


def test_icarl_stores_multimodal_exemplars_replays_them_and_classifies_by_class_means(bench):
    class DataSpy(SupervisedPlugin):
        sizes = []

        def before_training_epoch(self, strategy, **kwargs):
            self.sizes.append(len(strategy.adapted_dataset))

    spy = DataSpy()
    s = build_icarl(mm.ICaRL, bench.tokenizer.vocab_size, plugins=[spy], memory_size=8)
    p = s.icarl_plugin
    s.train(bench.train_stream[0])
    assert len(p.x_memory) == 2 and [len(m) for m in p.x_memory] == [4, 4]  # 8 / 2 classes
    assert all(isinstance(x, dict) and set(x) == {"image", "text", "audio"} for m in p.x_memory for x in m)
    assert len({int(x["text"].shape[-1]) for m in p.x_memory for x in m}) > 1  # variable length

    s.train(bench.train_stream[1])
    n1 = len(bench.train_stream[1].dataset)
    assert spy.sizes == [len(bench.train_stream[0].dataset), n1 + 8]  # exemplars replayed
    assert [len(m) for m in p.x_memory] == [2, 2, 2, 2]  # reduced to 8 / 4 classes
    assert sorted(p.class_means) == list(range(N_CLASSES))
    ncm = s.model.eval_classifier
    assert ncm.class_means.shape == (N_CLASSES, 8)

    s.model.eval()
    x = next(iter(ours.make_plugin_loader(bench.test_stream[0].dataset, batch_size=6)))[0]
    with torch.no_grad():
        out = s.model(x)
        feats = s.model.feature_extractor(x)
    feats = feats / feats.norm(dim=1, keepdim=True)
    expected = -torch.cdist(ncm.class_means, feats).T  # nearest class mean
    assert torch.allclose(out, expected, atol=1e-5)


def test_icarl_buffer_transform_applies_to_replayed_dicts(bench):
    from avalanche_mm.data import ModalityTransform

    s = build_icarl(
        mm.ICaRL,
        bench.tokenizer.vocab_size,
        buffer_transform=ModalityTransform({"audio": lambda a: a * 0 + 7.0}),
    )
    s.train(bench.train_stream[0])
    memory = s.icarl_plugin.memory_dataset()
    assert len(memory) == 8
    audio = [memory[i][0]["audio"] for i in range(len(memory))]
    assert all(a is None or bool((a == 7.0).all()) for a in audio)
    with pytest.raises(TypeError, match="buffer_transform"):
        ours.ICaRLPlugin(8, buffer_transform="not callable")


def test_stock_icarl_fails_on_multimodal_batches_ours_trains():
    train, test, tok = make_toy_datasets(n_classes=N_CLASSES, n_per_class=6)
    # an old-style benchmark (experience.benchmark exists) so the stock plugin gets to the batch
    old = nc_benchmark(train, test, n_experiences=2, task_labels=False, fixed_class_order=[0, 1, 2, 3])
    s = build_icarl(with_mixin(stock.ICaRL), tok.vocab_size)
    with pytest.raises(AttributeError, match="'MultimodalBatch' object has no attribute 'shape'"):
        s.train(old.train_stream[0])
    s = build_icarl(mm.ICaRL, tok.vocab_size)
    for exp in old.train_stream:
        s.train(exp)
    assert len(s.icarl_plugin.x_memory) == N_CLASSES


# --------------------------------------------------------------------------
# the twins still work on plain tensor data
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tensor_bench():
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset

    def data(n):
        g = torch.Generator().manual_seed(n)
        y = torch.arange(N_CLASSES).repeat(n)
        x = torch.randn(len(y), 3, 4, 4, generator=g) + y[:, None, None, None]
        return _make_taskaware_tensor_classification_dataset(x, y)

    return class_incremental_benchmark(
        {"train": data(6), "test": data(3)}, num_experiences=2, class_order=[0, 1, 2, 3]
    )


@pytest.mark.parametrize(
    "name,kw",
    [
        ("EWC", {"ewc_lambda": 1.0}),
        ("MAS", {}),
        ("GEM", {"patterns_per_exp": 6}),
        ("AGEM", {"patterns_per_exp": 6, "sample_size": 6}),
        ("DER", {"mem_size": 8, "batch_size_mem": 4}),
        ("ER_ACE", {"mem_size": 8, "batch_size_mem": 4}),
        ("ICaRL", {"memory_size": 8, "buffer_transform": None, "fixed_memory": True}),
    ],
)
def test_twin_still_trains_on_plain_tensor_inputs(tensor_bench, name, kw):
    def mlp(out):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, out))

    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin

    evaluator = EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])
    common = dict(train_mb_size=6, eval_mb_size=12, evaluator=evaluator)
    if name == "ICaRL":
        fe, clf = mlp(8), torch.nn.Linear(8, N_CLASSES)
        params = list(fe.parameters()) + list(clf.parameters())
        s = mm.ICaRL(feature_extractor=fe, classifier=clf, optimizer=torch.optim.SGD(params, lr=0.1),
                     **kw, **common)
    else:
        model = mlp(N_CLASSES)
        s = getattr(mm, name)(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                              criterion=torch.nn.CrossEntropyLoss(), **kw, **common)
    for exp in tensor_bench.train_stream:
        s.train(exp)
    results = s.eval(tensor_bench.test_stream)
    assert 0.0 <= results["Top1_Acc_Stream/eval_phase/test_stream"] <= 1.0
