"""Every recorded result names the command that reproduces it, and that command would run.

A table (``*.md``) names it in a line ``Reproduce: `COMMAND```, a JSON record under a ``"command"``
key (a plot shares the stem of its JSON record). A command is one or more ``python SCRIPT ARGS``
joined by ``&&``; each script must exist and accept its arguments: its ``build_parser()`` parses
them (``--set`` keys of an example are checked against its configuration). Nothing is run.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("examples/results", "benchmarks/results")
# per-unit progress logs of runs in flight are git-ignored (.gitignore), never results
FILES = sorted(p for folder in FOLDERS for p in (ROOT / folder).iterdir()
               if p.is_file() and not p.name.endswith("_progress.jsonl"))
_REPRODUCE = re.compile(r"^Reproduce: `([^`]+)`\s*$", re.M)


def _json_commands(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["command"]] if isinstance(value.get("command"), str) else []
        return found + [c for v in value.values() for c in _json_commands(v)]
    if isinstance(value, list):
        return [c for v in value for c in _json_commands(v)]
    return []


def commands(path: Path) -> list[str]:
    """The commands a results file names (empty for a file that names none)."""
    if path.suffix == ".md":
        return _REPRODUCE.findall(path.read_text(encoding="utf-8"))
    if path.suffix == ".json":
        return _json_commands(json.loads(path.read_text(encoding="utf-8")))
    return []


_modules: dict[Path, Any] = {}


def _script(path: Path) -> Any:
    """The script as a module (imported once; its folder on ``sys.path``, as when it runs)."""
    if path not in _modules:
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        spec = importlib.util.spec_from_file_location(f"_provenance_{path.parent.name}_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _modules[path] = module
    return _modules[path]


def check_command(command: str, results_file: Path) -> None:
    for part in command.split(" && "):
        argv = shlex.split(part)
        assert argv[:1] == ["python"] and len(argv) > 1, f"{results_file.name}: not `python SCRIPT ...`: {part!r}"
        script = ROOT / argv[1]
        assert script.is_file(), f"{results_file.name}: {argv[1]} does not exist"
        module = _script(script)
        assert hasattr(module, "build_parser"), f"{argv[1]} has no build_parser()"
        try:
            args = module.build_parser().parse_args(argv[2:])
        except SystemExit as exc:  # argparse's answer to an unknown flag or a bad value
            raise AssertionError(f"{results_file.name}: {argv[1]} rejects {argv[2:]}") from exc
        if argv[1].startswith("examples/") and len(command.split(" && ")) == 1:
            _check_stem(args, results_file)


def _check_stem(args: Any, results_file: Path) -> None:
    """An example's command writes the file it is recorded in (under the example's name or a table of it)."""
    stem = results_file.stem
    assert stem.startswith(args.example), (stem, args.example)
    if args.tag:
        assert stem == f"{args.example}_{args.tag}", (stem, args.tag)
    else:
        assert stem.endswith("_quick") == args.quick, (stem, args.quick)


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.parent.name}/{p.name}" for p in FILES])
def test_results_file_names_a_command_that_exists(path):
    if path.suffix == ".png":
        assert path.with_suffix(".json").is_file(), f"{path.name}: no JSON record with its command"
        return
    assert path.suffix in (".md", ".json"), f"{path.name}: unexpected file in a results folder"
    found = commands(path)
    assert found, f"{path.name} names no command that reproduces it"
    for command in found:
        check_command(command, path)
    twin = path.with_suffix(".json" if path.suffix == ".md" else ".md")
    if twin.is_file():
        assert set(commands(twin)) == set(found), f"{path.name} and {twin.name} name different commands"


def test_a_wrong_command_is_caught(tmp_path):
    bad = tmp_path / "continual_quick.md"  # a real table that certificates.py does not write
    with pytest.raises(AssertionError, match="does not exist"):
        check_command("python examples/nothing.py --quick", bad)
    with pytest.raises(AssertionError, match="rejects"):
        check_command("python examples/certificates.py --quick --set no_such_setting=1", bad)
    with pytest.raises(AssertionError, match="rejects"):
        check_command("python scripts/full_runs/drive.py no_such_job RES/x", bad)
    with pytest.raises(AssertionError):  # writes certificates_quick.md, not continual_quick.md
        check_command("python examples/certificates.py --quick", bad)
    check_command("python examples/certificates.py --quick --set 'priors=(\"learned\",)'", tmp_path / "certificates_quick.md")
