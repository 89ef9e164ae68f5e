"""``python -m skkprior demo``: the main job runs and prints its table."""

from __future__ import annotations

import logging
import re

import pytest

from skkprior import __version__
from skkprior._cli import main
from skkprior._demo import format_table, run_demo, summarize


@pytest.mark.slow
def test_demo_quick_runs_and_reports_every_part(capsys):
    rows = run_demo(quick=True)
    tasks = {r["task"].split(",")[0] for r in rows}
    assert {"few-shot", "certified", "continual"} <= tasks
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["nll"] >= 0 and 0.0 <= r["ece"] <= 1.0
    certs = [r["certificate"] for r in rows if r["task"].startswith("certified")]
    assert len(certs) == 2 and all(0 < c < 0.7 for c in certs), certs  # non-vacuous
    # the continual chain still knows the first task after learning the second
    chain_first = [r for r in rows if r["method"].startswith("posterior") and "task 1" in r["task"]][0]
    assert chain_first["accuracy"] > 0.8
    table = format_table(rows)
    assert "learned Kronecker prior" in table and "higher is better" in table and "probability >= 0.965" in table
    summary = summarize(rows)
    assert "docs/examples/index.md" in summary and "Certificate:" in summary and "Continual:" in summary


def test_demo_command_prints_phases_once_each_and_no_warning(capsys, caplog):
    assert main(["demo", "--quick"]) == 0
    out = capsys.readouterr().out
    for k in range(1, 5):
        assert out.count(f"[{k}/4]") == 2 and re.search(rf"\[{k}/4\] .*: done in \d+\.\d s", out)
    assert "What this shows:" in out and "finished in" in out
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_command_line_requires_a_command(capsys):
    with pytest.raises(SystemExit):
        main([])


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"skkprior {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert re.search(r"demo\s+run the method's jobs", top)
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    demo = capsys.readouterr().out
    for option in ("--quick", "--seed", "--device", "--threads"):
        assert re.search(rf"{option}( \w+)?\s+\S", demo), option  # every option has a help text


@pytest.mark.parametrize("device", ["cuda:99", "no-such-device"])
def test_unavailable_device_is_a_one_line_error(device, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--device", device])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "--device" in err and "Traceback" not in err


def test_the_cli_gives_back_threads_and_refuses_a_negative_seed(capsys):
    import torch

    threads = torch.get_num_threads()
    with pytest.raises(SystemExit) as info:
        main(["demo", "--seed", "-1"])
    assert info.value.code == 2 and "--seed must be in 0" in capsys.readouterr().err
    main(["demo", "--quick", "--threads", "2" if threads == 1 else "1"])
    assert torch.get_num_threads() == threads
    assert logging.getLogger("skkprior._demo").level == logging.NOTSET
