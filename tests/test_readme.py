"""The README's code runs as written, and its commands are the ones CI and users run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.slow
def test_readme_python_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (block,) = _python_blocks()
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert 0 < namespace["est"].certificate_.risk_bound <= 1
    assert namespace["proba"].shape[1] == 5
    assert (tmp_path / "digits_prior.pt").exists()


def test_readme_commands():
    text = README.read_text()
    assert "python -m skkprior demo" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "test-command-begin" in ci
    block = text.split("<!-- test-command-begin -->")[1].split("<!-- test-command-end -->")[0]
    assert "pip install torch==2.13.0" in block and "fetch_data.sh" in block and "pytest" in block
    assert "ruff check ." in block and "SKKPRIOR_REQUIRE_DATA=1" in block
    # the getting-started page shows the same command (without the docs toolchain)
    (command,) = re.findall(r"```\n(.*?)\n```", block, flags=re.S)
    page = (README.parent / "docs" / "getting-started.md").read_text()
    simple = command.replace('".[test,docs]"', '".[test]"').replace("SKKPRIOR_REQUIRE_DOCS=1 ", "")
    assert simple in page
