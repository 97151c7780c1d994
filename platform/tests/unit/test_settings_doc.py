"""docs/contract.md's settings table is the one ``notiflow.settings_doc`` renders from ``Settings``."""

from __future__ import annotations

from pathlib import Path

import pytest

from notiflow import settings_doc
from notiflow.config import Settings

CONTRACT = Path(__file__).resolve().parents[3] / "docs" / "contract.md"


def test_the_contract_holds_the_generated_settings_table() -> None:
    document = CONTRACT.read_text(encoding="utf-8")
    wanted = settings_doc.replace_table(document, settings_doc.render_table())
    assert document == wanted, f"docs/contract.md's settings table is out of date; run: {settings_doc.COMMAND}"


def test_every_setting_has_a_row_and_a_description() -> None:
    table = settings_doc.render_table()
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no description"
        assert f"| `NOTIFLOW_{name.upper()}` |" in table


def test_the_table_is_replaced_between_the_markers_only() -> None:
    doc = f"before\n{settings_doc.BEGIN}\nold rows\n{settings_doc.END}\nafter\n"
    wanted = f"before\n{settings_doc.BEGIN}\n| t |\n{settings_doc.END}\nafter\n"
    assert settings_doc.replace_table(doc, "| t |") == wanted
    with pytest.raises(ValueError, match="markers"):
        settings_doc.replace_table("no markers here", "| t |")


def test_check_and_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "contract.md"
    doc.write_text(f"# c\n{settings_doc.BEGIN}\n| stale |\n{settings_doc.END}\n", encoding="utf-8")
    assert settings_doc.main(["--check", str(doc)]) == 1
    assert settings_doc.COMMAND in capsys.readouterr().err
    assert settings_doc.main(["--write", str(doc)]) == 0
    assert settings_doc.main(["--check", str(doc)]) == 0
    assert "`NOTIFLOW_MAX_RETRIES`" in doc.read_text(encoding="utf-8")
