"""The documentation a newcomer reads: every relative link resolves, and the README's set-up commands are real.

Links are checked in README.md, docs/*.md and benchmarks/README.md: a relative target must be a file of the
repository, and a `#fragment` must name a heading of the target page (GitHub's anchor rules).
"""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted([REPO / "README.md", REPO / "benchmarks" / "README.md", *(REPO / "docs").glob("*.md")])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose_lines(page: Path) -> list[str]:
    """The page's lines outside fenced code blocks, with inline code removed (links in code are not links)."""
    lines, in_code = [], False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_code = not in_code
            continue
        if not in_code:
            lines.append(re.sub(r"`[^`]*`", "", line))
    return lines


def heading_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings: lower case, punctuation dropped, spaces to hyphens."""
    anchors, seen = set(), {}
    for line in page.read_text(encoding="utf-8").splitlines() if page.suffix == ".md" else []:
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match or line.startswith("#!"):
            continue
        anchor = re.sub(r"[^\w\- ]", "", match.group(1).replace("`", "").lower()).replace(" ", "-")
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        anchors.add(anchor if count == 0 else f"{anchor}-{count}")
    return anchors


def relative_links(page: Path) -> list[str]:
    return [
        target
        for line in prose_lines(page)
        for target in LINK.findall(line)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto: ...
    ]


def test_pages_are_found():
    names = {page.relative_to(REPO).as_posix() for page in PAGES}
    expected = {
        "README.md",
        "docs/training.md",
        "docs/inference.md",
        "docs/hub.md",
        "docs/benchmarks.md",
        "docs/data.md",
    }
    assert expected <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(REPO).as_posix())
def test_relative_links_resolve(page):
    broken = []
    for target in relative_links(page):
        path_part, _, fragment = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.is_file() or REPO not in linked.parents:
            broken.append(f"{target}: no such file in the repository")
        elif fragment and fragment not in heading_anchors(linked):
            broken.append(f"{target}: {linked.relative_to(REPO)} has no heading with the anchor #{fragment}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_readme_set_up_commands_are_those_ci_and_the_scripts_run():
    """The README's two set-up commands name existing scripts, and its test command is the one CI runs."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "## Set-up: two commands\n\n```bash\n" in readme, "README.md has no 'Set-up: two commands' bash block"
    block = readme.split("## Set-up: two commands\n\n```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["bash examples/run_demo.sh", "bash tests/run_tests.sh"]
    for command in commands:
        assert (REPO / command.split()[1]).is_file(), command
    ci_commands = [
        line.strip()
        for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.strip().startswith("bash ")
    ]
    assert ci_commands == ["bash tests/run_tests.sh"], ".ci/run must run the README's test command"
