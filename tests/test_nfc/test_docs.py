"""The repository's documentation stands on its own: every doc link resolves to a file (and heading) in the
repository, and no tracked file points at notes that live outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# [text](target) in Markdown, and bare mentions of a repository doc such as docs/MODEL.md in any text
MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
DOC_MENTION = re.compile(r"(?<![\w/.])((?:docs/[\w-]+|README)\.md)")
# built from pieces so that this file does not match itself
OUTSIDE_NOTES = re.compile("FIELD" + r"[- ]NOTES|shared/" + "DESIGN|\\.\\./" + "shared/", re.IGNORECASE)


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)  # no headings inside code blocks
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+)$", text, flags=re.MULTILINE)}


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (FileNotFoundError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [REPO / name for name in out.decode().split("\0") if name]


def test_the_docs_are_found():
    names = {p.relative_to(REPO).as_posix() for p in DOCS}
    assert {"README.md", "docs/DESIGN.md", "docs/MODEL.md", "docs/LIVE.md"} <= names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(doc: Path):
    broken = []
    for target in MARKDOWN_LINK.findall(doc.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (doc.parent / path_part).resolve() if path_part else doc
        if not resolved.exists() or REPO not in (resolved, *resolved.parents):
            broken.append(f"{target}: no such file in the repository")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: {resolved.name} has no heading #{anchor}")
    assert not broken, f"{doc.name}: {broken}"


def test_every_mentioned_doc_exists():
    """Code and docs name docs by their repository path (docs/MODEL.md); each such name is a real file."""
    missing = sorted({f"{path.relative_to(REPO)}: {name}" for path in tracked_files() if path.is_file()
                      for name in DOC_MENTION.findall(path.read_text(errors="ignore"))
                      if not (REPO / name).is_file()})
    assert not missing, missing


def test_no_tracked_file_cites_notes_outside_the_repository():
    citing = [str(path.relative_to(REPO)) for path in tracked_files()
              if path.is_file() and OUTSIDE_NOTES.search(path.read_text(errors="ignore"))]
    assert not citing, f"these files cite notes that are not in the repository: {citing}"
