"""The report: one source (report_context) rendered to Markdown by a Jinja2 template,
report.html converted from that Markdown, console text from the same tables; metrics a
new method logs appear without any change to the report."""

import json
import os
import re

import markdown
import pytest
import yaml

from avalanche_mm.experiments.io import atomic_write_json
from avalanche_mm.experiments.report import (
    build_report,
    extra_metrics_table,
    md_table,
    modality_families,
    render_html,
    report_context,
)
from avalanche_mm.experiments.state import new_state, write_state


def _record(metric, value, *, phase="train", stream="train", step=0):
    return {"time": float(step), "x_plot": step, "name": f"{metric}/{phase}_phase/{stream}_stream/Task000",
            "metric": metric, "phase": phase, "stream": stream, "task": 0, "experience": None, "extra": None,
            "value": value}


def _strategy(out, study, name, method, *, rows, baseline=None, unimodal=None, scalars=None, records=()):
    folder = os.path.join(out, study, name)
    os.makedirs(folder, exist_ok=True)
    st = new_state(study=study, strategy=name, method=method, fingerprint="x", n_experiences=len(rows[0]))
    st.update(rows=rows, finished=list(range(len(rows))), complete=len(rows) == len(rows[0]), baseline=baseline,
              unimodal=unimodal or [], scalars=scalars or [{} for _ in rows], train_seconds=[1.0] * len(rows),
              eval_seconds=[0.5] * len(rows))
    write_state(folder, st)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)


@pytest.fixture
def results(tmp_path):
    """A results folder written by hand: an MTIL-like study with two strategies (one a new
    method logging its own metrics), an audio-visual study, and a study nothing ran in."""
    out = str(tmp_path / "out")
    os.makedirs(out)
    cfg = {
        "name": "hand-made",
        "description": "A report written from `state.json` files.",
        "report": {"html": True, "plots": False, "expectations": [
            {"study": "mtil", "kind": "greater", "metric": "last", "higher": "newmethod", "lower": "finetune",
             "description": "new method keeps more"},
            {"study": "mtil", "kind": "at_least", "metric": "avg", "strategy": "finetune", "value": 0.99,
             "description": "impossible"},
        ]},
        "studies": {
            "mtil": {"title": "MTIL | tiny", "benchmark": {"name": "demo-mtil"},
                     "model": {"kind": "clip", "backbone": "tiny-openclip"},
                     "strategies": {"finetune": {}, "newmethod": {}}},
            "av": {"benchmark": {"name": "demo-av"}, "model": {"kind": "fusion", "name": "fusion"},
                   "strategies": {"er": {}}},
            "empty": {"benchmark": {"name": "demo-av"}, "model": {"kind": "fusion", "name": "fusion"},
                      "strategies": {"er": {}}},
        },
    }
    with open(os.path.join(out, "config.yaml"), "w") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    atomic_write_json(os.path.join(out, "environment.json"), {
        "device": "cpu", "torch_threads": 2, "seed": 0, "versions": {"torch": "2.x", "avalanche-lib": "0.6.0"},
        "studies": {"mtil": {"experiences": ["colours", "shapes"], "multi_task": True, "description": "two tasks",
                             "parameters": {"trainable": 1000, "total": 1234}},
                    "av": {"experiences": ["exp0", "exp1"], "multi_task": False}},
    })
    _strategy(out, "mtil", "finetune", "finetune", rows=[[0.5, 0.2], [0.4, 0.6]], baseline=[0.1, 0.2],
              scalars=[{}, {"Top1_Acc_Stream/Task001": 0.5, "Align_ModalityGap": 0.8}],
              records=[_record("Loss_Epoch", 2.0, step=0), _record("Loss_Epoch", 1.5, step=1),
                       _record("TrainTime_Exp", 3.0)])
    _strategy(out, "mtil", "newmethod", "newmethod", rows=[[0.5, 0.2], [0.5, 0.7]], baseline=[0.1, 0.2],
              scalars=[{}, {"DDAS_RoutingAcc": 0.75, "Align_ModalityGap": 0.7}],
              records=[_record("Loss_Epoch", 1.0), _record("DDAS_RoutingAcc", 0.75, phase="eval", stream="test")])
    _strategy(out, "av", "er", "er", rows=[[0.5, float("nan")], [0.25, 0.75]],
              unimodal=[{"fused": [0.5, 0.0], "audio": [0.5, 0.0], "image": [0.25, 0.0]},
                        {"fused": [0.25, 0.75], "audio": [0.25, 0.5], "image": [0.5, 0.5]}],
              scalars=[{}, {"ModalityImbalanceIndex_Stream": 0.4, "ModalityContribution_audio_Stream": 0.1,
                            "ModalityContribution_image_Stream": 0.2}],
              records=[_record(f"OGMGE_Coeff_{m}_Epoch", v, step=k) for k, v in enumerate([1.0, 0.5]) for m in
                       ("audio", "image")])
    return out


def test_report_sections_and_numbers(results):
    printed = []
    res = build_report(results, log=printed.append)
    md = open(os.path.join(results, "report.md")).read()
    assert md.startswith("# hand-made\n\nA report written from `state.json` files.\n\n## MTIL | tiny\n")
    for text in (
        "- benchmark: `demo-mtil` - two tasks",
        "- model: `clip` / `tiny-openclip`, 1,000 trainable of 1,234 parameters",
        "- experiences: colours, shapes",
        "### Summary (accuracies in %)",
        "| strategy | method | Transfer | Avg | Last | Forgetting | BWT | FWT | train s |",
        "| finetune | finetune | 20.0 | 42.5 | 50.0 | 10.0 | -10.0 | 0.0 | 2 |",  # mean of A, mean of its last row, 0.5 - 0.4
        "### Cross-modal alignment after the last experience (probe set of reference pairs)",
        "| newmethod | 0.700 |",
        "### Accuracy matrices (%)",
        "**newmethod** (newmethod)",
        "| after shapes | 50.0 | 70.0 |",
        "| strategy | method | Final avg acc | Avg incremental acc | Forgetting | BWT | train s |",
        "| strategy | fused acc | audio alone | image alone | audio contribution | image contribution |",
        "## empty\n\n- benchmark: `demo-av`",
        "_no strategy has run yet_",
        "## Expected phenomena",
        "- yes: new method keeps more: newmethod 60.0 vs finetune 50.0",
        "- **no**: impossible: finetune 0.425 (>= 0.99)",
        "## Environment",
        "- device: cpu, threads: 2, seed: 0",
        "- versions: torch 2.x, avalanche-lib 0.6.0",
    ):
        assert text in md, text
    # the title's pipe is a heading, not a table; the console prints the same tables
    text = res["tables"]
    assert "== MTIL | tiny ==" in text and "Final avg acc" in text and "imbalance index" in text
    assert "[yes] new method keeps more" in text and "[NO ] impossible" in text
    assert "Further metrics" not in text  # the long table stays in the report
    assert printed[0] == text
    assert [e["holds"] for e in res["expectations"]] == [True, False]
    summary_md = open(os.path.join(results, "summary.md")).read()
    assert summary_md.startswith("# hand-made: summary\n") and "| finetune | finetune | 20.0 | 42.5 |" in summary_md
    assert "- benchmark" not in summary_md and "Further metrics" not in summary_md and "Environment" not in summary_md


def test_html_is_the_markdown_converted(results):
    build_report(results, log=lambda *_: None)
    md = open(os.path.join(results, "report.md")).read()
    page = open(os.path.join(results, "report.html")).read()
    body = markdown.markdown(md, extensions=["tables", "sane_lists"], output_format="html")
    assert body in page and page.startswith("<!DOCTYPE html>") and "<title>hand-made</title>" in page
    assert "`" not in body  # every code span rendered
    assert "<li>benchmark: <code>demo-mtil</code> - two tasks</li>" in page
    assert "<code>DDAS_RoutingAcc</code>" in page
    assert "<li><strong>no</strong>: impossible" in page
    # one HTML table per Markdown table, one heading per Markdown heading
    assert page.count("<table>") == len(re.findall(r"^\|---", md, flags=re.M)) >= 8
    assert page.count("<h3") == md.count("\n### ")
    assert "<h2>MTIL | tiny</h2>" in page


def test_html_escapes_and_can_be_turned_off(results):
    page = render_html("# a <b> & c\n\n| x |\n|---|\n| 1 \\| 2 |\n", title="<t>")
    assert "<title>&lt;t&gt;</title>" in page and "<td>1 | 2</td>" in page
    cfg_path = os.path.join(results, "config.yaml")
    cfg = yaml.safe_load(open(cfg_path))
    cfg["report"]["html"] = False
    yaml.safe_dump(cfg, open(cfg_path, "w"))
    build_report(results, log=lambda *_: None)
    assert not os.path.exists(os.path.join(results, "report.html"))


def test_md_table_escapes_pipes():
    table = md_table([["name", "value"], ["a|b", "1"]])
    assert table.splitlines() == ["| name | value |", "|---|---:|", "| a\\|b | 1 |"]
    assert "<td>a|b</td>" in markdown.markdown(table, extensions=["tables"])


def test_metrics_of_a_new_method_appear_without_changes(results):
    ctx = report_context(results, plots=False)
    mtil, av, empty = ctx["studies"]
    assert [t["caption"] for t in empty["tables"]] == []
    further = {t["caption"]: t for t in mtil["tables"]}["Further metrics"]
    assert not further["console"]
    rows = {r[0]: r[1:] for r in further["rows"]}
    assert further["rows"][0] == ["metric", "finetune", "newmethod"]
    assert rows["`DDAS_RoutingAcc`"] == ["-", "0.750"]            # an evaluation scalar only one method logs
    assert rows["`Loss_Epoch` (training, last)"] == ["1.500", "1.000"]  # the last training value
    # what the fixed tables show, and timings, are not repeated
    assert not any(k.startswith(("`Top1_Acc", "`Align_ModalityGap", "`TrainTime")) for k in rows)
    av_rows = {r[0]: r[1:] for t in av["tables"] if t["caption"] == "Further metrics" for r in t["rows"]}
    assert av_rows["`OGMGE_Coeff_audio_Epoch` (training, last)"] == ["0.500"]
    assert not any("ModalityContribution" in k for k in av_rows)
    # the summaries carry them too (summary.json)
    nm = next(r for r in ctx["rows"] if r["strategy"] == "newmethod")
    assert nm["extra"] == {"DDAS_RoutingAcc": 0.75} and nm["training"] == {"Loss_Epoch": 1.0}


def test_any_additional_numeric_summary_key_is_rendered():
    base = {"strategy": "s", "method": "m", "avg": 0.5, "extra": {}, "training": {}, "complete": True}
    table = extra_metrics_table([
        {**base, "routing_accuracy": 0.25, "retrieval": {"i2t_R1": 0.5, "note": "text"}, "label": "x"},
        {**base, "strategy": "t", "routing_accuracy": 2500.0},
    ])
    assert table == [["metric", "s", "t"], ["`retrieval.i2t_R1`", "0.500", "-"],
                     ["`routing_accuracy`", "0.250", "2500"]]
    assert extra_metrics_table([base]) is None


def test_modality_families_group_training_signals():
    series = {"er": {"OGMGE_Coeff_audio_Epoch": [1, 0.5], "OGMGE_Coeff_image_Epoch": [1, 1],
                     "Loss_Epoch": [2.0], "Gate_text": [0.1], "Gate_textual_MB": [0.3]},
              "ft": {"OGMGE_Coeff_audio_Epoch": []}}
    fams = modality_families(series, ["audio", "image", "text"])
    assert list(fams) == ["Gate", "OGMGE_Coeff"]
    assert set(fams["OGMGE_Coeff"]) == {("er", "audio"), ("er", "image")}
    assert set(fams["Gate"]) == {("er", "text")}
    assert modality_families(series, []) == {}


def test_per_modality_signals_plot(results):
    build_report(results, log=lambda *_: None, plots=True)
    plots = sorted(os.listdir(os.path.join(results, "plots")))
    assert "av_modality_signals.png" in plots and "mtil_modality_signals.png" not in plots
    md = open(os.path.join(results, "report.md")).read()
    assert "### Per-modality training signals\n\n![Per-modality training signals](plots/av_modality_signals.png)" in md


def test_greater_over_repeated_studies_compares_means():
    from avalanche_mm.experiments.config import _check_expectations
    from avalanche_mm.experiments.report import check_expectations

    sums = {"a": {"x": {"last": 0.9}, "y": {"last": 0.5}}, "b": {"x": {"last": 0.4}, "y": {"last": 0.6}},
            "c": {"x": {"last": 0.5}}}
    item = {"study": ["a", "b"], "kind": "greater", "metric": "last", "higher": "x", "lower": "y", "description": "d"}
    [(holds, text)] = check_expectations([item], sums, {}, {})
    assert holds and text == "d: x 65.0 vs y 55.0 (mean over 2 runs; x ahead in 1 of 2)"
    [(holds, text)] = check_expectations([dict(item, study=["a", "c"])], sums, {}, {})
    assert not holds and "has not run in c" in text
    assert _check_expectations([item]) is None
    assert "non-empty list" in _check_expectations([dict(item, study=[])])
    assert "non-empty list" in _check_expectations([{"study": ["a"], "kind": "at_least", "metric": "last",
                                                     "strategy": "x", "value": 1}])
