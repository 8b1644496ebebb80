"""The multimodal template mixin fixes Avalanche 0.6.0's gaps (and the tests show the gaps)."""

import pytest
import torch
from avalanche.training import Naive as StockNaive
from avalanche.training.templates import SupervisedTemplate

from avalanche_mm.benchmarks.toy import ToyFusionNet, toy_benchmark
from avalanche_mm.data import MultimodalBatch
from avalanche_mm.strategies import GenerativeReplay, MultimodalSupervisedTemplate, Naive, Replay


@pytest.fixture(scope="module")
def bench():
    return toy_benchmark(n_experiences=2, n_classes=4, n_per_class=8, missing_audio_rate=0.3)


def _strategy(cls, bench, **kw):
    model = ToyFusionNet(n_classes=4, vocab_size=bench.tokenizer.vocab_size)
    return cls(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=8,
        eval_mb_size=16,
        evaluator=None,
        **kw,
    )


def test_stock_avalanche_drops_collate_on_class_incremental_training(bench):
    stock = _strategy(StockNaive, bench)
    # default collate cannot batch variable-length text / missing audio
    with pytest.raises((RuntimeError, TypeError)):
        stock.train(bench.train_stream[0])


def test_mixin_uses_dataset_collate_on_class_incremental_training(bench):
    ours = _strategy(Naive, bench)
    seen, sizes = [], []
    from avalanche.core import SupervisedPlugin

    class Spy(SupervisedPlugin):
        def before_forward(self, strategy, **kw):
            seen.append(strategy.mb_x)
            sizes.append(strategy.mb_batch_size)

    ours.plugins.append(Spy())
    ours.train(bench.train_stream[0])
    assert seen and all(isinstance(x, MultimodalBatch) for x in seen)
    assert any((~x.present["audio"]).any() for x in seen)
    assert sizes == [len(x) for x in seen] and sizes[0] == 8


def test_collate_fn_given_to_train_and_eval_is_used(bench):
    ours = _strategy(Naive, bench)
    calls = {"n": 0}
    base = bench.train_stream[0].dataset.collate_fn

    def counting(samples):
        calls["n"] += 1
        return base(samples)

    ours.train(bench.train_stream[0], collate_fn=counting)
    assert calls["n"] > 0
    calls["n"] = 0
    ours.eval(bench.test_stream[:1], collate_fn=counting)
    assert calls["n"] > 0


def test_recursive_device_move_of_nested_batches():
    nested = [
        (MultimodalBatch({"a": torch.ones(2, 3)}), {"b": [torch.zeros(2)]}),
        torch.tensor([0, 1]),
        torch.tensor([0, 0]),
    ]

    class Holder:
        pass

    ours = Holder()
    ours.mbatch = list(nested)
    ours.device = torch.device("meta")
    MultimodalSupervisedTemplate._unpack_minibatch(ours)
    (mm, d), y, t = ours.mbatch
    assert mm["a"].is_meta and mm.present["a"].is_meta and d["b"][0].is_meta and y.is_meta

    stock = Holder()
    stock.mbatch = list(nested)
    stock.device = torch.device("meta")
    with pytest.raises(AttributeError, match="'tuple' object has no attribute 'to'"):
        SupervisedTemplate._unpack_minibatch(stock)


def test_replay_buffer_batches_are_multimodal(bench):
    from avalanche.core import SupervisedPlugin

    sizes = []

    class Spy(SupervisedPlugin):
        def before_forward(self, strategy, **kw):
            sizes.append((len(strategy.mb_x), strategy.mb_y.unique().tolist()))

    s = _strategy(Replay, bench, mem_size=8, plugins=[Spy()])
    s.train(bench.train_stream[0])
    sizes.clear()
    s.train(bench.train_stream[1])
    # replayed classes (0, 1) appear in the second experience's minibatches
    assert any(set(labels) & {0, 1} for _, labels in sizes)


def test_replay_rejects_inconsistent_sizes(bench):
    from avalanche.training.storage_policy import ReservoirSamplingBuffer

    with pytest.raises(ValueError, match="mem_size=10 but storage_policy.max_size=5"):
        _strategy(Replay, bench, mem_size=10, storage_policy=ReservoirSamplingBuffer(max_size=5))


def test_unsupported_stock_strategy_is_the_stock_class():
    # stock behaviour on tensor data, the multimodal error on dict data: tests/strategies/test_twins_stock.py
    import avalanche.training as stock

    assert issubclass(GenerativeReplay, stock.GenerativeReplay)


def test_replay_plugin_updates_buffer_without_deprecated_call(bench):
    import warnings

    from avalanche.training.storage_policy import ReservoirSamplingBuffer

    from avalanche_mm.strategies.plugins import ReplayPlugin

    s = _strategy(Replay, bench, mem_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        s.train(bench.train_stream[0])
    assert len(s.replay_plugin.storage_policy.buffer) == 8

    calls = []

    class Custom(ReservoirSamplingBuffer):
        def update(self, strategy, **kw):  # a policy that still overrides the old API
            calls.append(strategy.experience.current_experience)
            self.post_adapt(strategy, strategy.experience)

    s2 = _strategy(Naive, bench, plugins=[ReplayPlugin(mem_size=4, storage_policy=Custom(max_size=4))])
    s2.train(bench.train_stream[0])
    assert calls == [0]
