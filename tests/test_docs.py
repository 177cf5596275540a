"""The project's own documentation: what the code and the docs cite lives in the repository.

Notes kept outside the repository (the planning files beside the checkout) cannot be read by someone who clones
it, so no text file cites them; every `docs/<name>.md` mentioned exists, and every "docs/<name>.md §N" or
"docs/<name>.md#anchor" names a section of that file.
"""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SUFFIXES = {".py", ".md", ".sh", ".txt", ".txtpb", ".ipynb", ".toml"}
SKIPPED_DIRS = {".venv", ".venv-notebooks", "venv", ".git", "build", "workdir", "__pycache__"}
# Built from pieces so that this file does not cite what it forbids.
OUTSIDE_NOTES = re.compile(r"\b(?:RECIPE|PERFORMANCE|DESIGN|STYLE)" + r"\.md\b")
OUTSIDE_FOLDER = re.compile(r"(?:\.\./|/work/)+shared\b")
DOC_MENTION = re.compile(r"\bdocs/([\w-]+\.md)\b")
SECTION_CITATION = re.compile(r"\bdocs/([\w-]+\.md)`?\s*§\s*(\d+(?:\.\d+)*)")
ANCHOR_CITATION = re.compile(r"\bdocs/([\w-]+\.md)#([\w-]+)")
BARE_SECTION = re.compile(r"§\s*(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)
NUMBERED = re.compile(r"(\d+(?:\.\d+)*)\.?\s")


def _git_files(*args: str) -> list[str]:
    result = subprocess.run(["git", "ls-files", "-z", *args], cwd=ROOT, capture_output=True, check=True)
    return [name for name in result.stdout.decode().split("\0") if name]


def text_files() -> list[Path]:
    """The repository's text files: git's tracked files plus new ones under docs/ and tests/ (or, without git, the
    tree minus virtual environments and build outputs)."""
    try:
        names = _git_files() + _git_files("--others", "--exclude-standard", "--", "docs", "tests")
        paths = {ROOT / name for name in names}
    except (OSError, subprocess.CalledProcessError):
        paths = {path for path in ROOT.rglob("*") if not SKIPPED_DIRS & set(path.relative_to(ROOT).parts)}
    return sorted(
        path
        for path in paths
        if path.suffix in SUFFIXES and path.is_file() and ".venv" not in path.relative_to(ROOT).parts
    )


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(doc: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", read(doc), flags=re.MULTILINE | re.DOTALL)  # no headings in code blocks
    return [match.group(2) for match in HEADING.finditer(text)]


def sections(doc: Path) -> set[str]:
    """The numbers of a doc's numbered headings ("## 6. Evaluation" -> "6")."""
    found = set()
    for heading in headings(doc):
        match = NUMBERED.match(heading + " ")
        if match:
            found.add(match.group(1))
    return found


def citations(pattern: re.Pattern) -> list[tuple[str, int, re.Match]]:
    """(file, line, match) of every match of `pattern` in the repository's text files."""
    found = []
    for path in text_files():
        text = read(path)
        for match in pattern.finditer(text):
            found.append((str(path.relative_to(ROOT)), text.count("\n", 0, match.start()) + 1, match))
    return found


def test_the_files_are_found():
    names = {str(path.relative_to(ROOT)) for path in text_files()}
    assert {"README.md", "docs/recipe.md", "tests/test_docs.py"} <= names


@pytest.mark.parametrize("pattern", [OUTSIDE_NOTES, OUTSIDE_FOLDER], ids=["notes", "folder"])
def test_nothing_cites_files_outside_the_repository(pattern):
    wrong = [f"{name}:{line}: {match.group(0)}" for name, line, match in citations(pattern)]
    assert not wrong, "cite the docs/ file that holds the fact instead:\n" + "\n".join(wrong)


def test_every_doc_mentioned_exists():
    missing = [
        f"{name}:{line}: {match.group(0)}"
        for name, line, match in citations(DOC_MENTION)
        if not (DOCS / match.group(1)).is_file()
    ]
    assert not missing, "\n".join(missing)


def test_every_cited_section_exists():
    wrong = [
        f"{name}:{line}: {match.group(0)}"
        for name, line, match in citations(SECTION_CITATION)
        if (DOCS / match.group(1)).is_file() and match.group(2) not in sections(DOCS / match.group(1))
    ]
    assert not wrong, "no such numbered section:\n" + "\n".join(wrong)


def test_every_cited_anchor_exists():
    wrong = [
        f"{name}:{line}: {match.group(0)}"
        for name, line, match in citations(ANCHOR_CITATION)
        if (DOCS / match.group(1)).is_file()
        and match.group(2) not in {slug(h) for h in headings(DOCS / match.group(1))}
    ]
    assert not wrong, "no such heading:\n" + "\n".join(wrong)


def test_a_docs_own_section_references_exist():
    """A bare "§N" inside docs/<name>.md refers to that file's own sections."""
    wrong = []
    for doc in sorted(DOCS.glob("*.md")):
        own = sections(doc)
        for match in BARE_SECTION.finditer(SECTION_CITATION.sub("", read(doc))):
            if match.group(1) not in own:
                wrong.append(f"{doc.relative_to(ROOT)}: {match.group(0)}")
    assert not wrong, "\n".join(wrong)


def test_the_recipe_has_numbered_sections_in_order():
    numbers = [NUMBERED.match(h + " ").group(1) for h in headings(DOCS / "recipe.md") if NUMBERED.match(h + " ")]
    assert numbers == [str(n) for n in range(1, len(numbers) + 1)] and len(numbers) >= 8, numbers


def test_the_checks_see_citations():
    """The patterns catch what they are for (so that a passing test means something)."""
    assert OUTSIDE_NOTES.search("see " + "RECIPE" + ".md section 6") and OUTSIDE_FOLDER.search("../" + "shared")
    assert not OUTSIDE_NOTES.search("docs/recipe.md §6")
    assert SECTION_CITATION.search("(`docs/recipe.md` §4)").groups() == ("recipe.md", "4")
    assert SECTION_CITATION.search("docs/recipe.md §6's Auto-BLEU-2").groups() == ("recipe.md", "6")
    assert slug("6. Evaluation: the metrics") == "6-evaluation-the-metrics"
    assert {"1", "2", "6", "8"} <= sections(DOCS / "recipe.md")
