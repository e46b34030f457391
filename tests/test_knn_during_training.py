"""kNN during training (`knn_every`) and the blur of the small-image crops."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from minidino.augment import crop_config
from minidino.config import TrainConfig, fast_config
from minidino.data import load_splits
from minidino.held_out import knn_top1
from minidino.presets import get_preset
from minidino.train import train
from minidino.viz import plot_training_curves


def tiny_config(tmp_path, **changes) -> TrainConfig:
    cfg = replace(fast_config(get_preset("cpu-demo")), out_dir=str(tmp_path), log_every=2)
    return replace(cfg, **changes)


def epoch_records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]


def test_knn_every_scores_teacher_and_student_every_n_epochs_and_at_the_end(
        tmp_path, capsys, one_thread):
    cfg = tiny_config(tmp_path, epochs=3, knn_every=2)
    train_split, test_split = load_splits(cfg)
    result = train(cfg, progress=False, train_split=train_split, test_split=test_split)
    records = epoch_records(result["run_dir"])
    assert [r["epoch"] for r in records] == [0, 1, 2]
    scored = [r["epoch"] for r in records if "knn_teacher" in r]
    assert scored == [1, 2]  # after the 2nd epoch (every 2) and after the last one
    lines = [line for line in capsys.readouterr().out.splitlines() if "kNN top-1" in line]
    assert len(lines) == 2 and lines[0].startswith("epoch 1:")
    # the last scores are those of the returned networks, computed the same way from outside
    for who in ("teacher", "student"):
        expected = knn_top1(result[who].backbone, train_split, test_split, cfg,
                            result[who].backbone.cls_token.device, progress=False)["top1"]
        assert records[-1][f"knn_{who}"] == pytest.approx(expected)
        assert result["knn"][f"knn_{who}"] == pytest.approx(expected)
    figure = plot_training_curves(result["run_dir"] / "metrics.jsonl", cfg.out_dim)
    assert len(figure.axes) == 4 and "kNN" in figure.axes[3].get_title()
    assert [line.get_xdata().tolist() for line in figure.axes[3].lines] == [[2, 3], [2, 3]]


def test_knn_every_zero_scores_nothing(tmp_path, one_thread):
    cfg = tiny_config(tmp_path, epochs=1)
    result = train(cfg, progress=False)
    assert all("knn_teacher" not in r for r in epoch_records(result["run_dir"]))
    assert result["knn"] == {}
    assert len(plot_training_curves(result["run_dir"] / "metrics.jsonl", cfg.out_dim).axes) == 3


def test_metrics_record_training_seconds(tmp_path, one_thread):
    cfg = tiny_config(tmp_path, epochs=1, knn_every=1)
    result = train(cfg, progress=False)
    lines = (result["run_dir"] / "metrics.jsonl").read_text().splitlines()
    times = [json.loads(line)["time"] for line in lines]
    assert times == sorted(times) and times[0] > 0
    assert times[-1] <= result["seconds"] + 1e-6  # kNN time is not training time
    run = json.loads((result["run_dir"] / "run.json").read_text())
    assert run["total_steps"] == cfg.epochs * run["steps_per_epoch"]


def test_blur_sigma_is_dinos_scaled_to_the_crop_size_unless_set():
    crops = crop_config(get_preset("cifar10"))
    shrink = 32 / 224  # DINO's 0.1-2 px at 224 px, on 32-px crops
    assert crops.blur_sigma == pytest.approx((0.1 * shrink, 2.0 * shrink))
    assert crops.blur_p == (1.0, 0.1, 0.5)  # DINO's probabilities: global 1, global 2, locals
    assert crop_config(replace(get_preset("cifar10"), blur_sigma=(0.2, 0.4))).blur_sigma == \
        (0.2, 0.4)
    big = crop_config(get_preset("imagenette"))
    assert big.blur_sigma == pytest.approx((0.1 * 128 / 224, 2.0 * 128 / 224))


def test_blur_can_be_turned_off():
    crops = crop_config(replace(get_preset("cifar10"), blur=False))
    assert crops.blur_p == (0.0, 0.0, 0.0)


def test_knn_is_logged_even_in_epochs_without_a_log_step(tmp_path, one_thread):
    cfg = tiny_config(tmp_path, epochs=2, knn_every=1, log_every=100)  # 4 steps per epoch
    result = train(cfg, progress=False)
    records = epoch_records(result["run_dir"])
    assert [r["epoch"] for r in records if "knn_teacher" in r] == [0, 1]
    assert "teacher_entropy" in records[-1]  # the last step is always a log step
