"""plan_cost.py's command line: a ``--count`` below the executions its EXPLAIN medians read is a usage error
naming the bound (it crashed on an empty median before), and the bound itself is accepted."""

from __future__ import annotations

import sys

import pytest
from plan_cost import EXPLAINED, parse

pytestmark = pytest.mark.timeout(10)


def test_a_count_below_the_explained_executions_is_a_usage_error_naming_the_bound(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["plan_cost.py", "--count", str(EXPLAINED - 1)])
    with pytest.raises(SystemExit) as exit_:
        parse()
    assert exit_.value.code == 2
    assert f"must be at least {EXPLAINED}, got {EXPLAINED - 1}" in capsys.readouterr().err


def test_a_count_that_is_not_a_number_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["plan_cost.py", "--count", "many"])
    with pytest.raises(SystemExit):
        parse()
    assert "invalid integer value: 'many'" in capsys.readouterr().err


def test_the_bound_itself_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["plan_cost.py", "--count", str(EXPLAINED)])
    assert parse().count == EXPLAINED
