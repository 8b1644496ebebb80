"""Stock names without a multimodal twin: Avalanche's own class on tensor data, a clear error on dict data;
GEM's QP solver is installed and a violated constraint is really projected."""

import copy
import types

import pytest
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.utils import AvalancheDataset  # noqa: F401

import avalanche.training as stock
from avalanche_mm import strategies as mm
from avalanche_mm.data import make_multimodal_dataset

NAMES = ["MIR", "ER_AML", "MER", "FeatureReplay", "GSS_greedy", "SCR", "GenerativeReplay", "LearningToPrompt"]


class _Tensors(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.targets = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.targets[i])


def _tensor_bench():
    g = torch.Generator().manual_seed(0)
    ds = _Tensors(torch.randn(24, 4, generator=g), torch.arange(24) % 4)
    return nc_benchmark(ds, ds, n_experiences=2, task_labels=False, fixed_class_order=[0, 1, 2, 3])


def _dict_bench():
    x = torch.randn(8, 4)
    ds = make_multimodal_dataset({"a": x, "b": x.clone()}, [0, 1] * 4)
    return benchmark_from_datasets(train=[ds], test=[ds])


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Linear(4, 8)
        self.classifier = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.classifier(torch.relu(self.features(x)))


def _kwargs(name, model):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    common = dict(model=model, optimizer=opt, train_mb_size=4, train_epochs=1, eval_mb_size=8, evaluator=None)
    if name == "MIR":
        return dict(common, criterion=torch.nn.CrossEntropyLoss(), mem_size=8, subsample=4, batch_size_mem=2)
    if name == "ER_AML":
        return dict(common, feature_extractor=model.features, mem_size=8, batch_size_mem=2)
    if name == "MER":
        return dict(common, mem_size=8, batch_size_mem=2, n_inner_steps=2)
    raise KeyError(name)


@pytest.mark.parametrize("name", NAMES)
def test_exported_name_is_the_stock_class(name):
    assert issubclass(getattr(mm, name), getattr(stock, name))


# (stock ER_AML cycles forever over an empty same-task buffer loader on data this small, ours the same)
@pytest.mark.parametrize("name", ["MIR", "MER"])
def test_stock_behaviour_on_tensor_data(name):
    bench = _tensor_bench()
    results = []
    for cls in (getattr(stock, name), getattr(mm, name)):
        torch.manual_seed(0)
        model = Net()
        strategy = cls(**_kwargs(name, model))
        for exp in bench.train_stream:
            strategy.train(exp)
        results.append(copy.deepcopy(model.state_dict()))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


@pytest.mark.parametrize("name", ["MIR", "ER_AML", "MER"])
def test_clear_error_on_dict_data(name):
    bench = _dict_bench()
    strategy = getattr(mm, name)(**_kwargs(name, Net()))
    with pytest.raises(NotImplementedError, match=f"{name} cannot train on multimodal \\(dict\\) inputs"):
        strategy.train(bench.train_stream[0])
    with pytest.raises(NotImplementedError, match="multimodal"):
        strategy.eval(bench.test_stream)


def test_gem_solver_projects_a_violated_constraint():
    from avalanche_mm.strategies.plugins import GEMPlugin

    model = torch.nn.Linear(3, 1, bias=False)
    plugin = GEMPlugin(patterns_per_experience=2, memory_strength=0.0)
    g_ref = torch.tensor([[1.0, 0.0, 0.0]])
    plugin.G = g_ref
    g = torch.tensor([[-1.0, 1.0, 0.5]])  # g . g_ref < 0: the constraint is violated
    model.weight.grad = g.clone()
    fake = types.SimpleNamespace(model=model, device=torch.device("cpu"), clock=types.SimpleNamespace(train_exp_counter=1))
    plugin.after_backward(fake)
    projected = model.weight.grad.flatten()
    assert not torch.allclose(projected, g.flatten())
    # (GEM adds 1e-3 to the QP diagonal, as the authors do: the constraint holds to ~1e-3)
    assert float(g_ref.flatten() @ projected) >= -2e-3  # no longer increases the old task loss
    # the closest such gradient: only the violating component is removed
    assert torch.allclose(projected, torch.tensor([0.0, 1.0, 0.5]), atol=2e-3)
