"""The README stays a front door (at most 250 lines), and no markdown link points outside the repository:
not to a sibling folder (``../shared``), not to an absolute path, not to the web. A clone must be whole.
Links inside it must lead somewhere: the file exists, and a ``#fragment`` names one of its headings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SKIP = {".git", ".venv", "node_modules", ".pytest_cache", ".mypy_cache", ".ruff_cache", "build", "dist", ".notiflow"}
README_MAX_LINES = 250

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE = re.compile(r"`[^`\n]*`")
INLINE = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
HTML = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
AUTOLINK = re.compile(r"<((?:https?|ftp|mailto):[^>\s]+)>|(?<![(<\w])(https?://[^\s)>\]]+)")


def markdown_files() -> list[Path]:
    return sorted(
        p for p in ROOT.rglob("*.md") if not SKIP.intersection(p.relative_to(ROOT).parts[:-1])
    )


def links(text: str) -> list[str]:
    """Every link target of a markdown text, code blocks and code spans left out."""
    prose = CODE.sub("", FENCE.sub("", text))
    found = [m.group(1) for pattern in (INLINE, REFERENCE, HTML) for m in pattern.finditer(prose)]
    found += [m.group(1) or m.group(2) for m in AUTOLINK.finditer(prose)]
    return found


def outside(source: Path, target: str) -> str | None:
    """Why ``target`` (a link in ``source``) leaves the repository, or None if it stays inside."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
        return "a URL (the repository must be whole without the network)"
    path = target.split("#", 1)[0].split("?", 1)[0]
    if not path:
        return None  # an anchor in the same file
    if path.startswith("/"):
        return "an absolute path"
    resolved = (source.parent / path).resolve()
    if not resolved.is_relative_to(ROOT):
        return "a path outside the repository"
    if not resolved.exists():
        return "a path that does not exist"
    return None


def anchors(text: str) -> set[str]:
    """The fragments a markdown file's headings answer to, as GitHub makes them (a repeated one gets -1, -2...)."""
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", text), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n, candidate = 0, slug
        while candidate in found:
            n += 1
            candidate = f"{slug}-{n}"
        found.add(candidate)
    return found


def broken_anchor(source: Path, target: str) -> str | None:
    """Why ``target``'s fragment names no heading of the markdown file it points to, or None."""
    path, _, fragment = target.partition("#")
    file = (source.parent / path).resolve() if path else source
    if not fragment or file.suffix != ".md" or not file.is_file():
        return None
    if fragment not in anchors(file.read_text(encoding="utf-8")):
        return f"a fragment that no heading of {file.relative_to(ROOT)} makes"
    return None


def test_the_readme_is_at_most_250_lines() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_the_readme_links_every_doc() -> None:
    readme = set(links((ROOT / "README.md").read_text(encoding="utf-8")))
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"docs/{p.name}" not in readme]
    assert not missing, f"README.md does not link {missing}"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_markdown_link_points_outside_the_repository(path: Path) -> None:
    found = links(path.read_text(encoding="utf-8"))
    bad = [(t, why) for t in found if (why := outside(path, t) or broken_anchor(path, t))]
    assert not bad, f"{path.relative_to(ROOT)}: " + "; ".join(f"{t} is {why}" for t, why in bad)


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("see [the spec](../shared/SPEC.md)", "../shared/SPEC.md"),
        ("[x]: /work/shared/SPEC.md", "/work/shared/SPEC.md"),
        ("[Toxiproxy](https://github.com/Shopify/toxiproxy)", "https://github.com/Shopify/toxiproxy"),
        ('<img src="../../elsewhere.png">', "../../elsewhere.png"),
        ("go to https://example.com now", "https://example.com"),
    ],
)
def test_the_check_catches_links_that_leave(text: str, bad: str) -> None:
    assert links(text) == [bad]
    assert outside(ROOT / "README.md", bad) is not None


def test_fragments_are_the_headings_slugs() -> None:
    text = "# Two commands\n## §3 WebSocket: /ws/{user_id}\n## Two commands\n```\n# not a heading\n```\n"
    assert anchors(text) == {"two-commands", "3-websocket-wsuser_id", "two-commands-1"}
    assert broken_anchor(ROOT / "README.md", "docs/contract.md#close-codes") is None
    assert broken_anchor(ROOT / "README.md", "docs/contract.md#no-such-heading") is not None


def test_code_and_inside_links_pass() -> None:
    text = "[contract](docs/contract.md) [top](#two-commands) `[x](../y)`\n```\n[z](/abs)\n```\n"
    assert links(text) == ["docs/contract.md", "#two-commands"]
    assert all(outside(ROOT / "README.md", t) is None for t in links(text))
