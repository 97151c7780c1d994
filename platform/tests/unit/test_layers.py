"""The layers the house style names: the transport (gateway/) calls the service layer and never imports the
PostgreSQL or Redis adapters (store/, streams/) itself. Read from the source, so a new import fails here at once
(gateway/hub.py imported the Pub/Sub message decoder from streams/ until it moved to frames.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import notiflow

PACKAGE = Path(notiflow.__file__).parent
ADAPTERS = ("notiflow.store", "notiflow.streams")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_gateway_imports_no_adapter() -> None:
    modules = sorted((PACKAGE / "gateway").glob("*.py"))
    assert len(modules) > 10  # the package is where this test thinks it is
    offending = {
        str(path.relative_to(PACKAGE)): sorted(n for n in imported_modules(path) if n.startswith(ADAPTERS))
        for path in modules
    }
    assert {k: v for k, v in offending.items() if v} == {}


def test_the_check_sees_an_adapter_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from notiflow.streams.pubsub import route_frames\nimport notiflow.store.ingest\n")
    assert {"notiflow.streams.pubsub", "notiflow.store.ingest"} <= imported_modules(module)
