"""NOTIFLOW_SERVER (gateway/serving.py): ``uvicorn`` serves the gateway through uvicorn's public options only and
loads nothing of transport.py, the one module that reaches into uvicorn's and websockets' internals."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from notiflow.config import Settings
from notiflow.gateway.app import server_options

pytestmark = pytest.mark.timeout(60)

_PLAIN_GATEWAY = """
import sys
from notiflow.config import Settings
from notiflow.gateway.app import create_app, server_options
settings = Settings(server="uvicorn")
create_app(settings)
print(server_options(settings)["ws"])
print(server_options(settings)["http"])
print(sorted(m for m in sys.modules if m in ("notiflow.gateway.transport", "notiflow.gateway.http_protocol")
             or ".websockets_sansio_impl" in m))
"""


def test_the_plain_server_is_uvicorns_own_and_loads_nothing_of_transport() -> None:
    done = subprocess.run([sys.executable, "-c", _PLAIN_GATEWAY], capture_output=True, text=True, timeout=50,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["websockets-sansio", "httptools", "[]"]


def test_the_fast_server_is_transports_protocol() -> None:
    from notiflow.gateway.http_protocol import HeaderDeadlineProtocol
    from notiflow.gateway.transport import FrameProtocol

    options = server_options(Settings(server="uvicorn-fast", http_header_timeout_s=7))
    assert options["ws"] is FrameProtocol
    assert issubclass(options["http"], HeaderDeadlineProtocol) and options["http"].header_timeout_s == 7
    assert Settings().server == "uvicorn-fast"


def test_an_unknown_server_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFLOW_SERVER", "granian")
    with pytest.raises(ValidationError, match="uvicorn-fast"):
        Settings()
