"""`avalanche-mm check` and `run` with the prompt methods (one tiny run for all five, resume included)."""

import json
import os
import shutil

import pytest
import yaml

from avalanche_mm.cli import main
from avalanche_mm.experiments.config import ConfigError, load_config

BENCH = {"name": "world-domain-incremental",
         "params": {"num_classes": 3, "num_domains": 2, "train_per_class": 4, "test_per_class": 2,
                    "modalities": ["image", "text"]}}
STRATEGIES = {
    "l2p": {"pool_size": 4, "prompt_length": 2, "top_k": 2},
    "dualprompt": {"g_layers": [0], "e_layers": [1]},
    "coda-prompt": {"pool_size": 4, "prompt_length": 2, "layers": [0, 1]},
    "s-liprompts": {"prompt_length": 2, "n_ctx": 4, "n_clusters": 2},
    "attriclip": {"bank_size": 4, "prompt_length": 2, "top_k": 2},
}
CFG = {
    "name": "prompts",
    "seed": 0,
    "device": "cpu",
    "progress_bar": False,
    "loggers": ["text"],
    "checkpoints": {"keep": "all"},
    "studies": {"dom": {
        "benchmark": BENCH,
        "model": {"kind": "clip", "backbone": "demo-clip", "freeze": ["logit_scale"]},
        "training": {"iterations": 2, "batch_size": 4, "lr": 0.01, "optimizer": "sgd"},
        "evaluation": {"initial": False, "alignment": False, "metrics": {"parameters": {}}},
        "strategies": STRATEGIES,
    }},
}


def _config(strategies, model=None):
    cfg = json.loads(json.dumps(CFG))
    cfg["studies"]["dom"]["strategies"] = strategies
    if model is not None:
        cfg["studies"]["dom"]["model"] = model
    return cfg


@pytest.fixture(scope="module")
def bundle():
    from avalanche_mm.experiments.registry import build_benchmark

    return build_benchmark(BENCH, seed=0)


def _problems(bundle, method, params, model=None):
    """What `avalanche-mm check` reports for one strategy entry (schema, then the method's check)."""
    from avalanche_mm.strategies.registry import METHODS, CheckContext

    cfg = _config({"a": dict(params, method=method)}, model)
    try:
        load_config(raw=cfg)
        errors = []
    except ConfigError as err:
        errors = list(err.errors)
    model_cfg = cfg["studies"]["dom"]["model"]
    ctx = CheckContext(key="studies.dom.strategies.a", kind=model_cfg["kind"], model=model_cfg, benchmark=BENCH,
                       training={}, bundle=bundle, model_key="studies.dom.model")
    # load_config runs the checks without the built benchmark; `check`/`run` add the bundle
    errors += [p for p in METHODS[method].problems(ctx, params) if p not in errors]
    return "\n".join(errors)


def test_check_names_method_model_and_need(bundle):
    load_config(raw=CFG)  # the tiny config is valid
    assert all(_problems(bundle, m, p) == "" for m, p in STRATEGIES.items())
    fusion = {"kind": "fusion", "name": "fusion", "params": {"hidden": 8, "conv_channels": [4]}, "freeze": []}
    text = _problems(bundle, "l2p", {}, model=fusion)
    assert "'l2p' needs a model of kind 'clip'" in text and "fusion" in text
    text = _problems(bundle, "l2p", {"pool_size": 3, "top_k": 4})
    assert "strategies.a.top_k" in text and "L2P on model 'demo-clip'" in text and "pool_size=3" in text
    text = _problems(bundle, "attriclip", {})  # 3 x 12 prompt tokens in demo-clip's 16-token context
    assert "strategies.a.prompt_length" in text and "AttriCLIP on model 'demo-clip'" in text and "16 tokens" in text
    text = _problems(bundle, "s-liprompts", {})  # n_ctx 16 does not fit either
    assert "strategies.a.n_ctx" in text and "S-liPrompts" in text
    text = _problems(bundle, "s-liprompts", {"n_ctx": 4, "n_clusters": 0})
    assert "n_clusters" in text
    text = _problems(bundle, "s-liprompts", {"n_ctx": 4, "n_clusters": 50})
    assert "n_clusters: S-liPrompts" in text and "12 training samples" in text
    text = _problems(bundle, "coda-prompt", {"pool_size": 5, "prompt_length": 4, "layers": [0, 1]})
    assert "multiple of the 2 tasks" in text
    text = _problems(bundle, "coda-prompt", {"pool_size": 4, "prompt_length": 3, "layers": [0, 1]})
    assert "even number" in text
    text = _problems(bundle, "dualprompt", {"e_layers": [7]})
    assert "strategies.a.e_layers" in text and "outside the image tower (2 blocks)" in text
    text = _problems(bundle, "dualprompt", {"n_tasks": 1})
    assert "n_tasks" in text and ">= 2" in text
    text = _problems(bundle, "attriclip", {"bank_size": 0})
    assert "bank_size" in text


def _state(out, name):
    st = json.load(open(os.path.join(out, "dom", name, "state.json")))
    return st


def test_run_every_prompt_method_and_resume(tmp_path):
    path = tmp_path / "prompts.yaml"
    path.write_text(yaml.safe_dump(CFG, sort_keys=False))
    out = str(tmp_path / "out")
    assert main(["run", str(path), "--output", out, "--no-report"]) == 0
    finals = {}
    for name in STRATEGIES:
        st = _state(out, name)
        assert st["complete"] and len(st["rows"]) == 2
        finals[name] = st["rows"][-1]
    assert _state(out, "s-liprompts")["scalars"][-1]["DomainSelectionAcc_Stream"] >= 0.0
    for name in STRATEGIES:  # the study's step budget reaches the prompt strategies (2 per experience)
        rows = [json.loads(line) for line in open(os.path.join(out, "dom", name, "metrics.jsonl"))]
        steps = [r["x_plot"] for r in rows if r["metric"] == "TrainTime_Exp"]
        assert steps == [2, 4], (name, steps)
    # the cost metrics report what trains per experience: S-liPrompts one domain's 2 image tokens
    # and 4 text tokens of width 64 (demo-clip), nothing of the backbone
    rows = [json.loads(line) for line in open(os.path.join(out, "dom", "s-liprompts", "metrics.jsonl"))]
    assert [r["value"] for r in rows if r["metric"] == "Params_Trainable_Exp"] == [384, 384]
    # pretend every method stopped after its first experience: the rerun resumes from
    # that checkpoint and ends with the same accuracies as the uninterrupted run
    for name in STRATEGIES:
        folder = os.path.join(out, "dom", name)
        st = _state(out, name)
        for key in ("rows", "unimodal", "scalars", "train_seconds", "eval_seconds"):
            st[key] = st[key][:1]
        st.update(finished=[0], complete=False, checkpoint=os.path.join("checkpoints", "exp_000.safetensors"), committed={}, digests={})
        with open(os.path.join(folder, "state.json"), "w") as fh:
            json.dump(st, fh)
        os.remove(os.path.join(folder, "checkpoints", "exp_001.safetensors"))
    assert main(["run", str(path), "--output", out, "--no-report"]) == 0
    for name in STRATEGIES:
        st = _state(out, name)
        assert st["complete"] and st["finished"] == [0, 1]
        assert st["rows"][-1] == pytest.approx(finals[name], abs=1e-6), name
