"""The one number formatter and the one Markdown table writer every report uses."""

import math

import numpy as np
import pytest

from pleura.report import fmt, markdown_table, mean_std


def test_fmt_value_spread_and_missing():
    assert fmt(0.67123) == "0.671"
    assert fmt(0.67123, pm=0.1543) == "0.671 ± 0.154"
    assert fmt(0.004, ".2e", pm=0.0) == "4.00e-03 ± 0.00e+00"
    assert fmt(0.1234, "+.3f", pm=0.01) == "+0.123 ± 0.010"  # the sign is the value's only
    assert fmt(-0.5, "+.3f") == "-0.500"
    assert fmt(3, ".0f") == "3" and fmt(np.float32(0.25), ".2f") == "0.25" and fmt(np.int64(7), ".3g") == "7"
    for missing in (None, math.nan, np.float64("nan")):
        assert fmt(missing) == "n/a" and fmt(missing, pm=0.1) == "n/a"
        assert fmt(missing, ".3g", missing="nan") == "nan"
        assert fmt(0.5, ".2f", pm=missing) == "0.50"  # an undefined spread is left out
    assert fmt(math.inf) == "inf"


def test_mean_std():
    assert mean_std([0.6, 0.8]) == (pytest.approx(0.7), pytest.approx(math.sqrt(0.02)))
    assert mean_std([0.6, None, math.nan, math.inf]) == (0.6, 0.0)
    m, s = mean_std([])
    assert math.isnan(m) and math.isnan(s)


def test_markdown_table():
    assert markdown_table(["init", "accuracy"], [["dense", "0.671"], ["sparse", 0.5]]) == (
        "| init | accuracy |\n|---|---|\n| dense | 0.671 |\n| sparse | 0.5 |"
    )
    assert markdown_table(["a", "b"], [["", "x"]], padded_rule=True) == "| a | b |\n| --- | --- |\n|  | x |"
    assert markdown_table(["a", "b", "c"], [], align=["l", None, "r"]).splitlines()[1] == "|:---|---|---:|"
    with pytest.raises(ValueError, match="row 0 has 1 cells but the header has 2 columns"):
        markdown_table(["a", "b"], [["x"]])
    with pytest.raises(ValueError, match="align should hold"):
        markdown_table(["a", "b"], [], align=["left", None])


def test_csv_text_takes_the_first_rows_columns_or_given_names():
    from pleura.report import csv_text

    assert csv_text([{"a": 1, "b": "x,y"}, {"a": 2, "b": ""}]) == 'a,b\r\n1,"x,y"\r\n2,\r\n'
    assert csv_text([], ["id"]) == "id\r\n" and csv_text([]) == ""
