"""The sweep runner: runs side by side in their own processes, a time budget, one table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from minidino.sweep import Sweep, parse_runs, run_config


def test_two_tiny_runs_train_concurrently_and_the_table_lists_both(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDINO_FAST", "1")
    runs = parse_runs([("base", ""), ("hot-lr", "--lr 2e-2")])
    folder = tmp_path / "sweep"
    sweep = Sweep("cpu-demo", runs, folder, common=["--knn-every", "1"], progress=False)
    done = sweep.run(minutes=0.08, calibration_steps=8)
    assert [r.status for r in done] == ["ok", "ok"]
    (a0, a1), (b0, b1) = (r.times for r in done)
    assert a0 < b1 and b0 < a1  # the two training processes overlapped in time
    for run in done:
        config = json.loads((folder / run.name / "config.json").read_text())
        assert config["epochs"] == run.epochs >= 1  # sized by the budget, not the preset's 2
        assert len(run.result["knn_curve"]) == run.epochs  # --knn-every 1: every epoch
        assert run.result["knn_teacher"] == run.result["knn_curve"][-1][1]
    assert json.loads((folder / "hot-lr" / "config.json").read_text())["lr"] == 2e-2
    table = (folder / "sweep.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| base") or
            line.startswith("| hot-lr")]
    assert len(rows) == 2 and "--lr 2e-2" in rows[1] and rows[0].endswith("| ok |")
    summary = json.loads((folder / "summary.json").read_text())
    assert [s["name"] for s in summary] == ["base", "hot-lr"]

    again = Sweep("cpu-demo", parse_runs([("base", ""), ("hot-lr", "--lr 2e-2")]), folder,
                  common=["--knn-every", "1"], progress=False).run(minutes=0.08)
    assert [r.status for r in again] == ["ok (reused)"] * 2  # finished runs are not redone
    assert [r.result for r in again] == [r.result for r in done]


def test_a_failing_run_is_reported_and_the_others_finish(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDINO_FAST", "1")
    runs = parse_runs([("good", ""), ("bad", "--resume-from-nowhere x")])
    with pytest.raises(ValueError, match="run 'bad': unknown option"):
        Sweep("cpu-demo", runs, tmp_path, progress=False)  # refused before anything starts
    runs = parse_runs([("good", ""), ("nan", "--lr 1e6 --clip-grad 0")])
    done = Sweep("cpu-demo", runs, tmp_path, progress=False).run()
    assert done[0].status == "ok" and done[0].result["epochs_trained"] == 2
    assert done[1].status.startswith("failed (exit 2)") and "loss is" in done[1].status


@pytest.mark.parametrize(("pairs", "message"), [
    ([], "at least one run"),
    ([("a", ""), ("a", "--lr 1e-3")], "unique"),
    ([("../x", "")], "run name '../x' is not allowed"),
])
def test_bad_runs_are_refused_with_a_clear_message(pairs, message):
    with pytest.raises(ValueError, match=message):
        parse_runs(pairs)


def test_seeds_repeat_every_run():
    runs = parse_runs([("a", "--lr 1e-3")], seeds=[0, 1])
    assert [(r.name, r.options) for r in runs] == [
        ("a-s0", ["--lr", "1e-3", "--seed", "0"]), ("a-s1", ["--lr", "1e-3", "--seed", "1"])]
    assert run_config("cpu-demo", ["--epochs", "3"], runs[1]).seed == 1


def test_a_bad_value_names_the_run_and_the_option():
    with pytest.raises(ValueError, match="--lr 'fast'"):
        run_config("cpu-demo", [], parse_runs([("x", "--lr fast")])[0])


def test_the_command_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "minidino", "sweep", "--fast", "--preset", "cpu-demo",
         "--out-dir", str(tmp_path), "--name", "cli", "--run", "only", "--epochs 1"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "| only | --epochs 1 | 1 |" in out.stdout
    assert (tmp_path / "sweeps" / "cli" / "only" / "checkpoint.pt").exists()
    bad = subprocess.run([sys.executable, "-m", "minidino", "sweep", "--run", "x", "",
                          "--minutes", "0"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "minutes=0.0 is not allowed" in bad.stderr
