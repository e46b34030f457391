"""The main job end to end in fast mode, and `eval` on the checkpoint it leaves."""

from __future__ import annotations

from dataclasses import replace

from minidino.__main__ import main
from minidino.config import fast_config, get_preset
from minidino.demo import evaluate_checkpoint, run_demo


def test_demo_trains_evaluates_and_draws(tmp_path, capsys):
    cfg = replace(fast_config(get_preset("cpu-demo")), out_dir=str(tmp_path))
    result = run_demo(cfg, progress=False)
    printed = capsys.readouterr().out
    assert "random initialisation" in printed and "trained teacher" in printed
    for which in ("trained", "random_init"):
        assert 0 <= result[which]["top1"] <= result[which]["top5"] <= 100
    assert result["gain"] == result["trained"]["top1"] - result["random_init"]["top1"]
    for name in ("curves.png", "attention.png", "metrics.jsonl", "config.json", "checkpoint.pt"):
        assert (result["run_dir"] / name).stat().st_size > 0

    # the checkpoint's teacher gives the same kNN numbers as the run reported
    again = evaluate_checkpoint(str(result["run_dir"] / "checkpoint.pt"))
    assert again["knn"] == result["trained"]


def test_cli_demo_and_eval_exit_cleanly(tmp_path):
    assert main(["demo", "--fast", "--no-progress", "--out-dir", str(tmp_path)]) == 0
    checkpoint = next(tmp_path.glob("*/checkpoint.pt"))
    assert main(["eval", str(checkpoint), "--linear"]) == 0
    assert main(["eval", str(tmp_path / "missing.pt")]) == 2
