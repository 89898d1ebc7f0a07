"""The docs stay usable: a short README whose first commands are the fresh-machine ones, and
relative links (with their #anchors) that resolve to files and headings of the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
DOCS = [README, ROOT / "CHANGELOG.md", ROOT / "deploy" / "REDIS.md", *sorted((ROOT / "docs").glob("*.md"))]

# The two commands a newcomer runs first (and that .ci/run checks in its own way).
RUN = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install . && "
    "cluster-risk replay --config deploy/examples/config.json deploy/examples/events.jsonl"
)
TEST = "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && python -m pytest"

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)


def prose(text: str) -> str:
    """The text without fenced blocks and code spans, where brackets are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, -1, -2 ... for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for title in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = re.sub(r"[^\w\- ]", "", title.replace("`", "").strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_the_readme_is_at_most_300_lines() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move the rest into docs/"


def test_the_readmes_first_two_commands_are_the_fresh_machine_ones() -> None:
    blocks = FENCE.findall(README.read_text(encoding="utf-8"))
    first = [block.split("\n", 1)[1].rsplit("```", 1)[0].strip() for block in blocks[:2]]
    assert first == [RUN, TEST]
    for name in ("config.json", "events.jsonl"):
        assert (ROOT / "deploy" / "examples" / name).is_file()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path) -> None:
    broken = []
    for target in LINK.findall(prose(doc.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.is_relative_to(ROOT) or not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert broken == [], f"{doc.relative_to(ROOT)}: {broken}"


def test_no_doc_points_outside_the_repository() -> None:
    """The contract is docs/contract.md: nothing refers to design files that are not in the repo."""
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        assert "../shared/design" not in text and "ARCHITECTURE.md" not in text, doc
        if doc.name != "contract.md":
            assert "SEMANTICS.md" not in text, doc
