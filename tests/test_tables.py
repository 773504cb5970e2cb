"""Tests of flatness.tables: exact Markdown output, escaping, refusals."""

import pytest

from flatness.tables import format_number, markdown_table, mean_pm


def test_table_text_is_exact_and_escapes_pipes():
    t = markdown_table(["a", "min |z|"], [["x|y", 1.23456], [3, None]], digits=2, align="lr")
    assert str(t) == "| a | min \\|z\\| |\n|---|--:|\n| x\\|y | 1.2 |\n| 3 | — |"
    assert t._repr_markdown_() == str(t)


def test_table_refuses_ragged_rows_and_bad_alignment():
    with pytest.raises(ValueError, match="rows: row 0"):
        markdown_table(["a", "b"], [[1]])
    with pytest.raises(ValueError, match="align"):
        markdown_table(["a", "b"], [[1, 2]], align="lx")


def test_mean_pm_uses_the_sample_standard_deviation():
    assert mean_pm([2.0, 4.0]) == "3.00 ± 1.41"
    with pytest.raises(ValueError, match="values"):
        mean_pm([])


def test_format_number_handles_nan_bools_and_integers():
    assert format_number(float("nan")) == "—"
    assert format_number(True) == "yes"
    assert format_number(12345678) == "12345678"
