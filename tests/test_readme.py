"""The README's code runs as written (fast), and its commands are the ones CI, users and the docs show."""

from __future__ import annotations

import re
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GETTING_STARTED = ROOT / "docs" / "getting-started.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _command_blocks(path: Path) -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", path.read_text(), flags=re.S)


def test_readme_python_runs_fast_and_prints_what_it_computes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (block,) = _python_blocks()
    namespace: dict = {}
    start = time.perf_counter()
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    elapsed = time.perf_counter() - start
    assert elapsed < 30, f"the README's example took {elapsed:.0f} s; it promises under 30 s"
    out = capsys.readouterr().out
    assert out.count("accuracy") == 2 and "certificate:" in out
    cert = namespace["est"].certificate_
    assert cert.risk_bound < 0.6, "the README's certificate must be non-vacuous"
    assert f"<= {cert.risk_bound:.3f}" in out
    assert namespace["clf"].predict_proba(namespace["X_tgt"][:3]).shape == (3, 5)
    assert (tmp_path / "digits_prior.pt").exists()


def test_readme_commands_are_the_ci_command():
    text = README.read_text()
    assert "python -m skkprior demo" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert "test-command-begin" in ci
    block = text.split("<!-- test-command-begin -->")[1].split("<!-- test-command-end -->")[0]
    (command,) = re.findall(r"```bash\n(.*?)\n```", block, flags=re.S)
    assert "pip install torch==2.13.0 " in command and "fetch_data.sh" in command and "pytest" in command
    assert "ruff check ." in command and "SKKPRIOR_REQUIRE_DATA=1" in command and "SKKPRIOR_REQUIRE_DOCS=1" in command
    assert "index-url" not in command  # CI installs from PyPI only


def test_readme_and_getting_started_show_the_same_commands():
    readme, page = _command_blocks(README), _command_blocks(GETTING_STARTED)
    assert len(readme) == 3, "install, CI test command, fast test loop"
    assert readme == page[: len(readme)], "docs/getting-started.md must show the README's commands, in its order"
    install, _, loop = readme
    # an ordinary machine gets the CPU build; a GPU machine is told the other line
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in install
    for path in (README, GETTING_STARTED):
        assert "pip install torch==2.13.0 && pip install . && python -m skkprior demo --device cuda" in path.read_text()
    assert 'not slow' in loop and "python -m pytest" in loop
