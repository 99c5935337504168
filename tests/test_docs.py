"""The README and the manual in docs/: every relative link resolves, and nothing cites a file users lack.

Links are checked the way GitHub renders them: a path relative to the linking file, and an optional
`#anchor` that must be the slug of a heading in the target Markdown file.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are code, not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+)$", _prose(page.read_text()), flags=re.M)
    return {_slug(h) for h in headings}


def _links(page: Path) -> list[str]:
    prose = _prose(page.read_text())
    targets = LINK.findall(prose)
    # a link target broken over two lines renders as text: count it as broken, not as no link
    assert len(targets) == prose.count("]("), f"{page.name}: a link target holds a space or a line break"
    return [t for t in targets if not re.match(r"[a-z]+:", t)]


def test_pages_exist():
    names = {p.name for p in PAGES}
    assert {"README.md", "CHANGELOG.md", "generation.md", "evaluation.md", "benchmarks.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    broken = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(
                f"{target}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}"
            )
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target}: no heading with anchor #{anchor} in {file.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_citation_of_files_outside_the_repository(page):
    """SPEC.md and the issue tracker are not shipped: pages cite papers and libraries instead."""
    found = re.findall(r"\b(?:SPEC|[Ii]ssue) ?#?\d+|SPEC\.md", page.read_text())
    assert not found, f"{page.name} cites {found}"


def test_readme_names_the_ci_test_command():
    """.ci/run runs `make test` as "the README's test command"."""
    assert "make test" in (ROOT / "README.md").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()
