"""The README and the reference pages: "Where things live" matches the tree, every relative
link resolves, and the README stays an onboarding page."""

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, REPO / "benchmarks" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# A folder line of the tree: two spaces of indent per level, the name, then its description.
FOLDER_LINE = re.compile(r"^((?:  ){0,3})([A-Za-z_][\w-]*)/(?:\s{2,}|$)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def listed_folders(readme: str) -> list[str]:
    """The folders of the README's "Where things live" block, as paths from the repository."""
    section = readme.split("## Where things live", 1)[1]
    block = section.split("```", 2)[1]
    stack: list[str] = []
    folders = []
    for line in block.splitlines():
        match = FOLDER_LINE.match(line)
        if not match:
            continue
        depth = len(match.group(1)) // 2
        assert depth <= len(stack), f"indented under nothing: {line!r}"
        stack = stack[:depth] + [match.group(2)]
        folders.append("/".join(stack))
    return folders


def tracked_files() -> list[str]:
    result = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"not a git checkout: {result.stderr.strip()}")
    return [f for f in result.stdout.splitlines() if (REPO / f).exists()]


def folders_to_list(files: list[str]) -> set[str]:
    """Every top-level folder, and every folder holding .py files under the two packages."""
    wanted = {f.split("/")[0] for f in files if "/" in f and not f.startswith(".")}
    for f in files:
        parts = f.split("/")
        if parts[0] in ("modelmap", "modelmap_assets") and f.endswith(".py"):
            wanted.update("/".join(parts[:i]) for i in range(2, len(parts)))
    return wanted


def test_the_folder_parser_reads_nesting():
    block = "\n".join(
        ["## Where things live", "```", "a/  x", "  b/  y", "          z/ text", "c/", "```"]
    )
    assert listed_folders(block) == ["a", "a/b", "c"]


def test_where_things_live_matches_the_tree():
    listed = listed_folders(README.read_text())
    assert len(listed) == len(set(listed)), f"listed twice: {listed}"
    missing = [f for f in listed if not (REPO / f).is_dir()]
    assert not missing, f"README lists folders that do not exist: {missing}"
    unlisted = sorted(folders_to_list(tracked_files()) - set(listed))
    assert not unlisted, f"README's 'Where things live' does not list: {unlisted}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(REPO)}: links to nothing: {broken}"


def test_the_readme_onboards():
    lines = README.read_text().splitlines()
    assert len(lines) <= 350, f"README has {len(lines)} lines: move reference to docs/"
    first_screen = "\n".join(lines[:40])
    for needed in ("make demo", "make test", "make ui", "127.0.0.1:3000", "make backfill MODELS="):
        assert needed in first_screen, f"the README's first screen does not mention {needed!r}"
