"""Trust: a results folder and a cache are untrusted input; nothing is executed, nothing is lost."""

import json
import os
import pickle
import stat

import pytest
import yaml
from avalanche.core import SupervisedPlugin

from avalanche_mm.cli import main
from avalanche_mm.experiments import runner
from avalanche_mm.experiments.checkpoint import read_header
from avalanche_mm.experiments.lock import LOCK_FILE, LockError, RunLock
from avalanche_mm.experiments.state import RecordError

AV = {
    "benchmark": {"name": "demo-av", "params": {"world": {"seed": 1, "image_size": 8}, "num_classes": 4,
                                                 "num_experiences": 2, "train_per_class": 3, "test_per_class": 2}},
    "model": {"kind": "fusion", "name": "fusion", "params": {"hidden": 4, "conv_channels": [2]}, "freeze": []},
    "training": {"epochs": 1, "batch_size": 4, "lr": 1e-2, "scheduler": "constant"},
    "evaluation": {"initial": False, "per_modality": False},
    "strategies": {"er": {"mem_size": 4}},
}
CLIP = {
    "benchmark": {"name": "demo-mtil", "params": {
        "world": {"seed": 0, "image_size": 32, "shapes": 2, "colours": 2, "textures": 2, "sizes": 2},
        "tasks": [{"name": "colours", "target": "colour"}, {"name": "shapes", "target": "shape"}],
        "train_per_class": 2, "test_per_class": 1, "reference_per_combination": 2}},
    "model": {"kind": "clip", "backbone": "demo-clip", "pretrain": {"enabled": True, "iterations": 1, "batch_size": 4}},
    "training": {"iterations": 1, "batch_size": 4, "lr": 1e-3, "warmup": 1},
    "evaluation": {"alignment": False},
    "strategies": {"er": {"mem_size": 2}},
}


def _cfg(tmp_path, studies, **extra):
    cfg = {"name": "trust", "seed": 0, "device": "cpu", "progress_bar": False, "checkpoints": {"keep": "all"},
           "report": {"plots": False, "html": False}, "studies": studies, **extra}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


class _Stop(SupervisedPlugin):
    """Interrupts training at experience ``exp`` (as a kill would: nothing after the last commit)."""

    stateless = True

    def __init__(self, exp, action=None):
        super().__init__()
        self.exp, self.action = exp, action

    def before_training_iteration(self, strategy, **kwargs):
        if strategy.experience.current_experience == self.exp:
            if self.action is not None:
                self.action()
            else:
                raise KeyboardInterrupt("simulated kill")


def _records(out, study="av", strategy="er"):
    path = os.path.join(out, study, strategy, "metrics.jsonl")
    return [(r["name"], r["x_plot"], r["value"]) for r in map(json.loads, open(path)) if "Time" not in r["name"] and "Throughput" not in r["name"]]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this object creates the marker file
        return (open, (self.marker, "w"))


def test_planted_pickles_execute_nothing(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, {"mtil": CLIP, "av": AV})
    out = str(tmp_path / "out")
    monkeypatch.setenv("AVALANCHE_MM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(KeyboardInterrupt):
        runner.run_experiment(cfg, output_dir=out, report=False, log=lambda *a: None,
                              extra_plugins=[lambda ctx: _Stop(1) if ctx.study == "av" else None])
    assert json.load(open(os.path.join(out, "run.json")))["status"] == "interrupted"
    marker = str(tmp_path / "executed")
    evil = pickle.dumps({"state_dict": _Evil(marker), "model": _Evil(marker)})
    planted = [os.path.join(r, f) for base in (out, str(tmp_path / "cache")) for r, _, fs in os.walk(base)
               for f in fs if f.endswith((".safetensors", ".pt"))]
    assert any("pretrained" in p for p in planted) and any("av/er/checkpoints" in p for p in planted)
    for p in planted:
        with open(p, "wb") as fh:
            fh.write(evil)
    with pytest.warns(UserWarning, match="ignoring the pretrained-backbone cache"):
        assert main(["run", cfg, "--output", out, "--no-report"]) == 3  # refused, with a message
    assert not os.path.exists(marker)
    pickle.loads(evil)  # the payload does work: it was never unpickled above
    assert os.path.exists(marker)


def test_checkpoint_path_from_state_is_confined(tmp_path, monkeypatch, capsys):
    cfg = _cfg(tmp_path, {"av": AV})
    out = str(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        runner.run_experiment(cfg, output_dir=out, report=False, log=lambda *a: None, extra_plugins=[lambda ctx: _Stop(1)])
    state_path = os.path.join(out, "av", "er", "state.json")
    state = json.load(open(state_path))
    ckpt = read_header(os.path.join(out, "av", "er", state["checkpoint"]))
    tree = ckpt["__metadata__"]["tree"]
    assert "__dataset_ref__" in tree and "__dataset_copy__" not in tree  # the buffer: indices, not data
    for bad in ("/etc/passwd", "../../../etc/passwd"):
        state["checkpoint"] = bad
        json.dump(state, open(state_path, "w"))
        assert main(["run", cfg, "--output", out, "--no-report"]) == 3
        assert "leaves the strategy folder" in capsys.readouterr().err or bad.startswith("/")


def test_second_run_refused_first_identical_to_lone_run(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, {"av": AV})
    lone, shared = str(tmp_path / "lone"), str(tmp_path / "shared")
    runner.run_experiment(cfg, output_dir=lone, report=False, log=lambda *a: None)
    refused = []

    def second_run():
        if not refused:
            with pytest.raises(LockError, match=f"pid {os.getpid()}") as err:
                runner.run_experiment(cfg, output_dir=shared, report=False, log=lambda *a: None)
            refused.append(str(err.value))

    runner.run_experiment(cfg, output_dir=shared, report=False, log=lambda *a: None,
                          extra_plugins=[lambda ctx: _Stop(1, second_run)])
    assert refused and "in use by another run" in refused[0]
    assert _records(shared) == _records(lone)
    st_a, st_b = (json.load(open(os.path.join(o, "av", "er", "state.json"))) for o in (lone, shared))
    assert st_a["rows"] == st_b["rows"] and st_a["finished"] == st_b["finished"]


def test_stale_lock_recovered_and_tmp_cleaned_and_umask(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).write_text(json.dumps({"pid": 999999999, "host": "x", "started": "then"}))
    (out / ".run.json.abc123.tmp").write_text("half")
    lines = []
    old = os.umask(0o022)
    try:
        runner.run_experiment(_cfg(tmp_path, {"av": AV}), output_dir=str(out), report=False, log=lines.append)
    finally:
        os.umask(old)
    assert any("recovered the lock" in line and "999999999" in line for line in lines)
    assert not (out / ".run.json.abc123.tmp").exists()
    assert stat.S_IMODE(os.stat(out / "run.json").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(out / "av" / "er" / "state.json").st_mode) == 0o644
    with RunLock(str(out)):  # released after the run
        pass


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_finished_record_is_an_error(tmp_path, damage, capsys):
    cfg = _cfg(tmp_path, {"av": AV})
    out = str(tmp_path / "out")
    assert main(["run", cfg, "--output", out, "--no-report"]) == 0
    path = os.path.join(out, "av", "er", "metrics.jsonl")
    data = open(path, "rb").read()
    data = data[:-40] if damage == "truncate" else data[:10] + bytes([data[10] ^ 1]) + data[11:]
    open(path, "wb").write(data)
    assert main(["run", cfg, "--output", out, "--no-report"]) == 3
    err = capsys.readouterr().err
    assert path in err and "delete the folder" in err and "Traceback" not in err
    with pytest.raises(RecordError):
        runner.run_experiment(cfg, output_dir=out, report=False, log=lambda *a: None)


def test_failed_run_recorded(tmp_path):
    def boom():
        raise RuntimeError("the disk caught fire")

    out = str(tmp_path / "out")
    with pytest.raises(RuntimeError):
        runner.run_experiment(_cfg(tmp_path, {"av": AV}), output_dir=out, report=False, log=lambda *a: None,
                              extra_plugins=[lambda ctx: _Stop(0, boom)])
    info = json.load(open(os.path.join(out, "run.json")))
    assert info["status"] == "failed" and info["error"] == "RuntimeError: the disk caught fire"
    # a bad model setting is refused before anything is written
    bad = dict(AV, model=dict(AV["model"], params={"hidden": "lots"}))
    assert main(["run", _cfg(tmp_path, {"av": bad}), "--output", str(tmp_path / "out2")]) == 2


def test_clear_errors_for_bad_inputs(tmp_path, capsys):
    def check(args, *needles, code=2):
        assert main(args) == code
        err = capsys.readouterr().err
        assert "Traceback" not in err and all(n in err for n in needles), err

    dup = tmp_path / "dup.yaml"
    dup.write_text("name: a\nseed: 1\nname: b\n")
    check(["check", str(dup)], "duplicate key 'name'")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    check(["check", str(latin)], "not UTF-8")
    check(["check", str(tmp_path)], "is a folder")
    cfg = _cfg(tmp_path, {"av": AV})
    check(["check", cfg, "--set", "studies.av.training.lr=.inf"], "studies.av.training.lr", "finite")
    check(["check", cfg, "--set", "studies.av.benchmark.params.world.noise=.nan"], "noise", "finite")
    check(["check", cfg, "--set", "name=../../escape"], "leave the results folder")
    check(["check", cfg, "--set", "studies.av.model.name=fusoin"], "did you mean 'fusion'")
    afile = tmp_path / "afile"
    afile.write_text("x")
    check(["run", cfg, "--output", str(afile)], "is a file")
    check(["run", cfg, "--output", str(afile / "below")], "is a file")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if not os.access(ro, os.W_OK):  # root can write anywhere
        check(["run", cfg, "--output", str(ro / "out")], "not writable")
    check(["run", cfg, "--output", str(tmp_path / "big"), "--set", "studies.av.model.params.hidden=100000"],
          "GiB", "use smaller sizes")


def test_main_job_turns_on_the_collates_non_finite_check():
    """Lazily loaded data is checked as it is read: prepare_study switches the collate on."""
    import torch

    from avalanche_mm.data.collate import MultimodalCollate
    from avalanche_mm.experiments.config import load_config
    from avalanche_mm.experiments.runner import prepare_study

    cfg = load_config(raw={
        "name": "finite", "device": "cpu", "progress_bar": False,
        "studies": {"s": {
            "benchmark": {"name": "toy", "params": {"n_experiences": 2, "n_classes": 4, "n_per_class": 2}},
            "model": {"kind": "fusion", "name": "toy-fusion"},
            "strategies": {"finetune": {}},
        }},
    })
    prepared = prepare_study(cfg, "s", device=torch.device("cpu"), log=lambda *a, **k: None, progress=False)
    collates = [e.dataset.collate_fn for e in prepared.bundle.scenario.train_stream]
    assert collates and all(isinstance(c, MultimodalCollate) and c.check_finite for c in collates)
