"""Tests for segtron.evaluation.testing: copypaste lines, result verification, flattening."""

import logging
from collections import OrderedDict

import pytest

from segtron.config import get_cfg
from segtron.evaluation import print_csv_format, verify_results
from segtron.evaluation.testing import flatten_results_dict

RESULTS = OrderedDict(
    bbox=OrderedDict(AP=41.23456, AP50=60.0, APs=float("nan"), **{"AP-person": 50.0}),
    segm={"AP": 37.5},
    time=1.5,
)


def _cfg(expected):
    cfg = get_cfg()
    cfg.TEST.EXPECTED_RESULTS = expected
    return cfg


def test_print_csv_format_lines(catch_logs):
    logs = catch_logs("segtron.evaluation.testing")
    print_csv_format(RESULTS)
    assert logs.messages() == [
        "copypaste: Task: bbox",
        "copypaste: AP,AP50,APs",
        "copypaste: 41.2346,60.0000,nan",
        "copypaste: Task: segm",
        "copypaste: AP",
        "copypaste: 37.5000",
        "copypaste: time=1.5",
    ]
    with pytest.raises(TypeError, match="dict of results"):
        print_csv_format([1, 2])


def test_verify_results_pass(catch_logs):
    logs = catch_logs("segtron.evaluation.testing")
    assert verify_results(_cfg([]), RESULTS) is True
    assert verify_results(_cfg([["bbox", "AP", 41.2, 0.05], ["segm", "AP", 37.0, 0.6]]), RESULTS)
    assert "Results verification passed." in logs.messages()


@pytest.mark.parametrize(
    "entry, reason",
    [
        (["bbox", "AP", 40.0, 0.5], "off by"),
        (["bbox", "APs", 0.0, 100.0], "not a finite number"),
        (["bbox", "APl", 10.0, 1.0], "missing"),
        (["keypoints", "AP", 10.0, 1.0], "missing"),
    ],
)
def test_verify_results_fail(entry, reason, catch_logs):
    logs = catch_logs("segtron.evaluation.testing")
    assert verify_results(_cfg([entry]), RESULTS) is False
    errors = logs.messages(logging.ERROR)
    assert errors[0] == "Result verification failed!"
    assert any(reason in e and f"{entry[0]}/{entry[1]}" in e for e in errors)
    assert any(e.startswith("Actual Results:") for e in errors)


def test_flatten_results_dict():
    assert flatten_results_dict({"bbox": {"AP": 1.0, "inner": {"x": 2}}, "t": 3}) == {
        "bbox/AP": 1.0,
        "bbox/inner/x": 2,
        "t": 3,
    }
