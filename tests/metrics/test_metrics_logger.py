"""ResultsLogger: every value, both files, resumable."""

import csv
import json
import pickle

import pytest
import torch
from avalanche.evaluation.metric_results import AlternativeValues, MetricValue
from PIL import Image

from avalanche_mm.metrics import ResultsLogger, parse_metric_name
from avalanche_mm.metrics.results_logger import FIELDS


def _mv(name, value, x=3):
    return MetricValue(None, name, value, x)


def _csv_rows(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_parse_metric_name():
    p = parse_metric_name("Top1_Acc_Exp/eval_phase/test_stream/Task002/Exp011")
    assert p == {"metric": "Top1_Acc_Exp", "phase": "eval", "stream": "test", "task": 2,
                 "experience": 11, "extra": None}
    p = parse_metric_name("ZeroShot_Retention/ctl")
    assert p["metric"] == "ZeroShot_Retention" and p["extra"] == "ctl" and p["phase"] is None
    assert parse_metric_name("Retrieval_i2t_R1/eval_phase/flickr_probe")["stream"] == "flickr_probe"


def test_writes_every_value_kind_to_jsonl_and_csv(tmp_path):
    log = ResultsLogger(path=str(tmp_path))
    log.log_metrics(
        [
            _mv("MyNewMetric_Exp/eval_phase/test_stream/Task000/Exp001", 0.25),
            _mv("Count/train_phase/train_stream", 7),
            _mv("Dict", {0: 0.5, 1: 0.75}),
            _mv("Vec", torch.tensor([1.0, 2.0])),
            _mv("NaNValue", float("nan")),
            _mv("Tensor0d", torch.tensor(0.125)),
            _mv("Alt", AlternativeValues(Image.new("RGB", (2, 2)), 0.9)),
            _mv("Picture", Image.new("RGB", (2, 2))),
        ]
    )
    recs = ResultsLogger.read(str(tmp_path))
    by_name = {r["name"]: r for r in recs}
    assert set(by_name) == {
        "MyNewMetric_Exp/eval_phase/test_stream/Task000/Exp001", "Count/train_phase/train_stream",
        "Dict/0", "Dict/1", "Vec", "NaNValue", "Tensor0d", "Alt",
    }
    assert set(recs[0]) == set(FIELDS)
    new = by_name["MyNewMetric_Exp/eval_phase/test_stream/Task000/Exp001"]
    assert (new["value"], new["x_plot"], new["experience"], new["task"]) == (0.25, 3, 1, 0)
    assert by_name["Count/train_phase/train_stream"]["value"] == 7
    assert by_name["Dict/1"]["value"] == 0.75
    assert by_name["Vec"]["value"] == [1.0, 2.0]
    assert by_name["NaNValue"]["value"] is None
    assert by_name["Tensor0d"]["value"] == 0.125
    assert by_name["Alt"]["value"] == 0.9
    assert log.skipped == {"Picture": 1}
    assert log.written == len(recs) == 8
    rows = _csv_rows(tmp_path / "metrics.csv")
    assert rows[0] == FIELDS and len(rows) == 9
    csv_vals = {r[2]: r[-1] for r in rows[1:]}
    assert csv_vals["NaNValue"] == "nan" and json.loads(csv_vals["Vec"]) == [1.0, 2.0]
    # every JSON line is strict JSON (no NaN literals)
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))


def test_resume_appends_with_a_single_header(tmp_path):
    first = ResultsLogger(path=str(tmp_path))
    first.log_single_metric("A", 1.0, 0)
    first.close()
    second = ResultsLogger(path=str(tmp_path))
    second.log_single_metric("A", 2.0, 1)
    second.close()
    assert [r["value"] for r in ResultsLogger.read(str(tmp_path))] == [1.0, 2.0]
    rows = _csv_rows(tmp_path / "metrics.csv")
    assert rows[0] == FIELDS and [r[-1] for r in rows[1:]] == ["1.0", "2.0"]


def test_logger_survives_pickling_and_keeps_appending(tmp_path):
    log = ResultsLogger(path=str(tmp_path))
    log.log_single_metric("A", 1.0, 0)
    clone = pickle.loads(pickle.dumps(log))
    clone.log_single_metric("B", 2.0, 1)
    clone.close()
    log.close()
    assert [r["name"] for r in ResultsLogger.read(str(tmp_path))] == ["A", "B"]


def test_foreign_csv_header_is_rejected(tmp_path):
    (tmp_path / "metrics.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="columns"):
        ResultsLogger(path=str(tmp_path))


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="plain file name"):
        ResultsLogger(path=str(tmp_path), csv_name="sub/x.csv")
    with pytest.raises(FileNotFoundError, match="no results file"):
        ResultsLogger.read(str(tmp_path / "nowhere"))
