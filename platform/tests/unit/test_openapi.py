"""OpenAPI documents every endpoint with examples, and /docs renders it."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from notiflow.config import Settings
from notiflow.gateway.app import create_app


def _has_example(content: dict[str, Any]) -> bool:
    return any("example" in media or "examples" in media for media in content.values())


def test_every_endpoint_has_a_summary_and_examples() -> None:
    app = create_app(Settings())
    schema = app.openapi()
    routes = [(m.upper(), path) for path, ops in schema["paths"].items() for m in ops]
    assert routes, "no routes?"
    missing = []
    for method, path in routes:
        op = schema["paths"][path][method.lower()]
        answers = op["responses"]
        documented = op.get("summary") and any(_has_example(a.get("content", {})) or code == "204"
                                               for code, a in answers.items())
        if method == "POST" and "{entry_id}" not in path and not _has_example(
            op.get("requestBody", {}).get("content", {})
        ):
            documented = False
        if not documented:
            missing.append(f"{method} {path}")
    assert not missing, f"endpoints without a summary or examples (add them to gateway/openapi.py): {missing}"
    assert "4008" in schema["info"]["description"], "the WebSocket close codes are documented"


def test_docs_page_renders_the_schema() -> None:
    # TestClient's Host is "testserver"; /docs is on only when asked for (its script comes from a CDN).
    client = TestClient(create_app(Settings(api_docs=True, allowed_hosts=["testserver"])))
    page = client.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text and "/openapi.json" in page.text
    schema = client.get("/openapi.json").json()
    example = schema["paths"]["/notifications"]["post"]["responses"]["202"]["content"]["application/json"]
    assert example["example"]["status"] == "accepted"


def test_notifications_take_a_status_url_with_an_example() -> None:
    schema = create_app(Settings()).openapi()
    body = schema["paths"]["/notifications"]["post"]["requestBody"]["content"]["application/json"]
    assert "one user with delivery receipts" in body["examples"]
    fields = body["schema"]["properties"]
    assert fields["status_url"]["anyOf"][0]["maxLength"] == 2048, fields["status_url"]
