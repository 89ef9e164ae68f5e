"""``python -m skkprior demo``: the main job runs and prints its table."""

from __future__ import annotations

import pytest

from skkprior._cli import main
from skkprior._demo import format_table, run_demo


@pytest.mark.slow
def test_demo_quick_runs_and_reports_every_part(capsys):
    rows = run_demo(quick=True)
    tasks = {r["task"].split(",")[0] for r in rows}
    assert {"target", "certified", "continual"} <= tasks
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["nll"] >= 0 and 0.0 <= r["ece"] <= 1.0
    certs = [r["certificate"] for r in rows if r["task"].startswith("certified")]
    assert all(0 < c <= 1 for c in certs)
    # the continual chain still knows the first task after learning the second
    chain_first = [r for r in rows if r["method"].startswith("posterior") and "task 1" in r["task"]][0]
    assert chain_first["accuracy"] > 0.8
    table = format_table(rows)
    assert "learned Kronecker prior" in table and "certificate" in table


def test_command_line_requires_a_command(capsys):
    with pytest.raises(SystemExit):
        main([])
