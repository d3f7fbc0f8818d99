"""The README and the docs refer only to what is in the repository: every relative link (and its
`#anchor`) and every repository path they mention (`docs/...`, `benchmarks/...`, ...) exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted(
    [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *(ROOT / "docs").glob("*.md")]
)

# [text](target): the text may hold backticks and wrap over lines; the target has no spaces.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# A repository path as prose mentions it, not the tail of a URL or of a longer path.
PATH = re.compile(r"(?<![\w/.:-])((?:docs|benchmarks|config|systemd|scripts)/[\w./*<>@-]*\w)")
PLACEHOLDER = re.compile(r"\b[A-Z]{2,}\b")  # benchmarks/results/NAME.json stands for any name
EXTERNAL = ("http://", "https://", "mailto:")


def outside_code_blocks(markdown: str) -> str:
    """The text without its fenced code blocks (their `# comment` lines are not headings)."""
    kept, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            kept.append(line)
    return "\n".join(kept)


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub generates for the headings of a Markdown file."""
    found = set()
    for line in outside_code_blocks(markdown).splitlines():
        if match := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line):
            text = re.sub(r"[^\w\- ]", "", match.group(1).lower())
            found.add(text.replace(" ", "-"))
    return found


def broken_links(document: Path) -> list[str]:
    """Relative links whose file, or whose anchor in that file, does not exist."""
    broken = []
    for target in LINK.findall(outside_code_blocks(document.read_text(encoding="utf-8"))):
        if target.startswith(EXTERNAL):
            continue
        path, _, anchor = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text()):
            broken.append(f"{target}: no such heading")
    return broken


def missing_paths(document: Path, root: Path = ROOT) -> list[str]:
    """Repository files the text names (relative to the repository's root) that don't exist.
    Only names with an extension count: `docs/s` is a unit (documents per second)."""
    missing = []
    for mention in PATH.findall(document.read_text(encoding="utf-8")):
        if "." not in mention.rsplit("/", 1)[-1]:
            continue
        pattern = PLACEHOLDER.sub("*", mention)
        exists = any(root.glob(pattern)) if "*" in pattern else (root / mention).exists()
        if not exists:
            missing.append(mention)
    return missing


def test_the_documents_are_found() -> None:
    names = {str(d.relative_to(ROOT)) for d in DOCUMENTS}
    assert {"README.md", "benchmarks/README.md", "docs/architecture.md"} <= names


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: str(d.relative_to(ROOT)))
def test_relative_links_exist(document: Path) -> None:
    assert broken_links(document) == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: str(d.relative_to(ROOT)))
def test_mentioned_paths_exist(document: Path) -> None:
    assert missing_paths(document) == []


def test_the_checks_catch_what_is_missing(tmp_path: Path) -> None:
    """Not vacuous: a missing file, a missing heading and a missing path are each reported;
    URLs, placeholders and globs that match are not."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "latency.json").write_text("{}")
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## Reading `verify`\n")
    readme = tmp_path / "README.md"
    readme.write_text(
        "[ok](docs/guide.md#reading-verify) [gone](docs/gone.md) [bad](docs/guide.md#nope)\n"
        "[web](https://example.com/x/docs/gone.md) [self](#top)\n\n# Top\n\n"
        "See docs/guide.md, docs/missing.md, benchmarks/results/NAME.json,\n"
        "benchmarks/results/*.json, https://example.com/docs/elsewhere.md and 40k docs/s.\n"
    )
    assert broken_links(readme) == [
        "docs/gone.md: no such file",
        "docs/guide.md#nope: no such heading",
    ]
    assert missing_paths(readme, root=tmp_path) == ["docs/gone.md", "docs/missing.md"]


MARKDOWN_NAME = re.compile(r"(?<![\w/.-])([\w-]+\.md)\b")


def test_code_and_tests_name_only_documents_in_the_repository() -> None:
    """Comments and docstrings send a newcomer to a document by its name (`docs/security.md`,
    `README`): each `*.md` they name must be one the repository has."""
    present = {path.name for path in ROOT.rglob("*.md") if ".venv" not in path.parts}
    missing = sorted(
        f"{source.relative_to(ROOT)}: {name}"
        for folder in ("cdc_daemon", "tests", "benchmarks", "scripts")
        for source in (ROOT / folder).rglob("*.py")
        if source != Path(__file__).resolve()  # its self-test names made-up documents
        for name in MARKDOWN_NAME.findall(source.read_text(encoding="utf-8"))
        if name not in present
    )
    assert missing == []
