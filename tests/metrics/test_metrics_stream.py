"""Known answers for the accuracy-matrix summaries and the published ZSCL MTIL tables."""

import math

import numpy as np
import pytest

from avalanche_mm.metrics import mtil_summary
from avalanche_mm.metrics.functional import (
    average_accuracy,
    average_incremental_accuracy,
    backward_transfer,
    forgetting,
    forward_transfer,
    last_accuracy,
    mtil_transfer_per_dataset,
    per_experience_forgetting,
    stream_summary,
    zero_shot_retention,
)

from avalanche_mm.metrics import reference as zscl_tables

# rows: after training experience t; columns: evaluated experience i
A = np.array(
    [
        [0.9, 0.2, 0.1],
        [0.7, 0.8, 0.3],
        [0.6, 0.5, 0.9],
    ]
)


def test_average_accuracy_per_step():
    assert average_accuracy(A, step=0) == pytest.approx(0.9)
    assert average_accuracy(A, step=1) == pytest.approx(0.75)
    assert average_accuracy(A) == pytest.approx(2.0 / 3.0)
    assert average_incremental_accuracy(A) == pytest.approx((0.9 + 0.75 + 2.0 / 3.0) / 3)
    assert last_accuracy(A) == pytest.approx(2.0 / 3.0)


def test_forgetting_uses_best_accuracy_after_learning_only():
    # column 1 was 0.95 zero-shot before it was learned: that must not count as "best"
    b = A.copy()
    b[0, 1] = 0.95
    np.testing.assert_allclose(per_experience_forgetting(b), [0.9 - 0.6, 0.8 - 0.5])
    assert forgetting(b) == pytest.approx(0.3)
    assert forgetting(A, step=1) == pytest.approx(0.2)


def test_forgetting_takes_the_max_over_history():
    b = np.array([[0.5, 0.0, 0.0], [0.9, 0.6, 0.0], [0.4, 0.6, 0.7]])
    # experience 0 peaked at 0.9 (after step 1), not at its own step
    np.testing.assert_allclose(per_experience_forgetting(b), [0.5, 0.0])


def test_bwt_and_fwt_gem_definitions():
    assert backward_transfer(A) == pytest.approx(((0.6 - 0.9) + (0.5 - 0.8)) / 2)
    assert forward_transfer(A, [0.1, 0.1, 0.2]) == pytest.approx(((0.2 - 0.1) + (0.3 - 0.2)) / 2)
    assert forward_transfer(A, [0.1, 0.1, 0.2], step=1) == pytest.approx(0.1)


def test_mtil_summary_small_case_per_dataset_transfer_not_pooled():
    m = np.array([[0.9, 0.2, 0.1], [0.7, 0.8, 0.5], [0.6, 0.5, 0.9]])
    s = mtil_summary(m)
    # transfer: mean over datasets i>=1 of mean_{t<i} A[t, i] = mean(0.2, (0.1+0.5)/2) = 0.25
    # (pooling the upper triangle would give 0.8/3)
    assert s["transfer"] == pytest.approx(0.25)
    assert s["avg"] == pytest.approx(m.sum() / 9)
    assert s["last"] == pytest.approx(2.0 / 3.0)
    assert set(s) == {"transfer", "avg", "last"}


def test_mtil_summary_zero_shot_row_constant_matrix():
    row = np.array([10.0, 20.0, 40.0, 50.0])
    s = mtil_summary(np.tile(row, (4, 1)))
    assert s["avg"] == pytest.approx(row.mean())
    assert s["last"] == pytest.approx(row.mean())
    assert s["transfer"] == pytest.approx(row[1:].mean())


@pytest.mark.parametrize("method", ["zero_shot", "finetune", "lwf", "zscl"])
def test_mtil_summary_reproduces_zscl_table_3_order_i(method):
    s = mtil_summary(zscl_tables.MATRICES[method])
    published = zscl_tables.PUBLISHED[method]
    got = (round(s["transfer"], 1), round(s["avg"], 1), round(s["last"], 1))
    assert got == published


@pytest.mark.parametrize("method", ["finetune", "lwf", "zscl"])
def test_mtil_per_dataset_transfer_reproduces_the_authors_row(method):
    got = np.round(mtil_transfer_per_dataset(zscl_tables.MATRICES[method]), 1).tolist()
    assert got == zscl_tables.PUBLISHED_TRANSFER_PER_DATASET[method]


def test_summaries_scale_with_the_unit():
    s1 = mtil_summary(A)
    s100 = mtil_summary(100 * A)
    for k in s1:
        assert s100[k] == pytest.approx(100 * s1[k])
    assert forgetting(100 * A) == pytest.approx(100 * forgetting(A))


def test_stream_summary_partial_and_complete():
    partial = stream_summary(A[:2], baseline=[0.1, 0.1, 0.2])
    assert partial == pytest.approx(
        {"average_accuracy": 0.75, "forgetting": 0.2, "bwt": -0.2, "fwt": 0.1}
    )
    full = stream_summary(A)
    assert {"mtil_transfer", "mtil_avg", "mtil_last", "forgetting", "bwt"} <= set(full)
    assert "fwt" not in full
    only_first = stream_summary(A[:1])
    assert only_first == {"average_accuracy": pytest.approx(0.9)}


def test_zero_shot_retention():
    np.testing.assert_allclose(zero_shot_retention([0.6, 0.3], initial=0.6), [1.0, 0.5])
    with pytest.raises(ValueError, match="positive"):
        zero_shot_retention([0.5], initial=0.0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: mtil_summary(A[:2]), "square"),
        (lambda: mtil_summary([[1.0]]), "square"),
        (lambda: mtil_summary(np.array([[1.0, math.nan], [1.0, 1.0]])), "NaN"),
        (lambda: average_accuracy([1.0, 2.0]), "2-D"),
        (lambda: forgetting(A, step=0), "at least 2"),
        (lambda: average_accuracy(A, step=5), "out of range"),
        (lambda: forward_transfer(A, [0.1]), "baseline"),
        (lambda: average_accuracy(np.array([[0.5, 0.5], [math.nan, 0.5]]), step=1), "NaN"),
    ],
)
def test_invalid_inputs_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
