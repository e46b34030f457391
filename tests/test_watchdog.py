"""The collapse watchdog: one warning, naming the collapse and its fixes, after `patience` epochs.

Besides feeding it made-up entropies, three short real trainings drive it: one whose teacher
collapses onto one prototype (no centering, a near-zero teacher temperature), one whose teacher
is flat (a huge teacher temperature, a center that cancels every batch) and a healthy one. Their
epochs.jsonl gives the per-epoch entropies the training loop logs.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace

import pytest

from minidino.config import fast_config
from minidino.data import DatasetSplit, TensorImageDataset
from minidino.presets import get_preset
from minidino.shapes import SHAPE_CLASSES, make_shapes
from minidino.train import train
from minidino.watchdog import CollapseWarning, CollapseWatchdog

K = 128
LOG_K = math.log(K)


def feed(watchdog: CollapseWatchdog, entropies: list[float | tuple[float, float]]
         ) -> tuple[list[str | None], list[warnings.WarningMessage]]:
    """Update once per epoch; return what each update returned and the warnings emitted."""
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        returned = [watchdog.update(epoch, *(h if isinstance(h, tuple) else (h,)))
                    for epoch, h in enumerate(entropies)]
    return returned, [r for r in records if issubclass(r.category, CollapseWarning)]


@pytest.mark.parametrize("mode, entropy, fixes", [
    ("one-prototype", 0.01, ("raise teacher_temp", "lower center_momentum", "--teacher-temp")),
    ("uniform", LOG_K - 0.01, ("lower teacher_temp", "raise center_momentum", "--teacher-temp")),
])
def test_warns_once_after_patience_epochs_naming_the_mode_and_the_fixes(mode, entropy, fixes):
    returned, records = feed(CollapseWatchdog(K, patience_epochs=3),
                             [2.0, entropy, entropy, entropy, entropy, entropy, 2.0, entropy])
    assert [r is not None for r in returned] == [False, False, False, True] + [False] * 4
    assert len(records) == 1 and str(records[0].message) == returned[3]
    message = returned[3]
    assert message.startswith(f"{mode} collapse") and "3 epochs in a row, up to epoch 3" in message
    assert all(fix.lower() in message.lower() for fix in fixes), message
    assert "collapse_patience=0" in message


def test_a_healthy_epoch_or_a_change_of_mode_restarts_the_count():
    pattern = [0.0, 0.0, 2.0, 0.0, 0.0, LOG_K, LOG_K, 2.0, LOG_K, 0.0]  # never 3 in a row
    returned, records = feed(CollapseWatchdog(K, patience_epochs=3), pattern)
    assert returned == [None] * len(pattern) and records == []
    returned, _ = feed(CollapseWatchdog(K, patience_epochs=1), [2.0, LOG_K])
    assert returned[0] is None and returned[1].startswith("uniform collapse")


def test_a_sharp_teacher_that_still_spreads_images_over_prototypes_is_healthy():
    # per-image entropy near 0, but the batch-averaged output is spread: no collapse
    returned, records = feed(CollapseWatchdog(K, patience_epochs=2), [(0.01, 3.0)] * 4)
    assert returned == [None] * 4 and records == []
    returned, _ = feed(CollapseWatchdog(K, patience_epochs=2), [(0.01, 0.02)] * 2)
    assert returned[1].startswith("one-prototype collapse")


def test_patience_zero_disables_the_watchdog():
    returned, records = feed(CollapseWatchdog(K, patience_epochs=0), [0.0] * 5 + [LOG_K] * 5)
    assert returned == [None] * 10 and records == []


@pytest.mark.parametrize("kwargs, words", [
    ({"out_dim": 1}, "out_dim=1"),
    ({"out_dim": K, "patience_epochs": -1}, "patience_epochs=-1"),
    ({"out_dim": K, "patience_epochs": 1.5}, "patience_epochs=1.5"),
    ({"out_dim": K, "tol": 0.5}, "tol=0.5"),
])
def test_bad_arguments_are_named(kwargs, words):
    with pytest.raises(ValueError, match=words):
        CollapseWatchdog(**kwargs)
    with pytest.raises(ValueError, match="teacher_entropy=nan"):
        CollapseWatchdog(K).update(0, float("nan"))


# ------------------------------------------------------------ real, deliberately collapsing runs
COLLAPSING = {
    # no centering (the center never moves from 0), a near-one-hot teacher that copies the
    # student at once, a large learning rate: every image ends up on one prototype
    "one-prototype": dict(center_momentum=1.0, teacher_temp=0.001, warmup_teacher_temp=0.001,
                          teacher_momentum=0.0, lr=0.5, clip_grad=0.0),
    # a flat teacher (temperature 10) and a center equal to each batch's own mean
    "uniform": dict(teacher_temp=10.0, warmup_teacher_temp=10.0, center_momentum=0.0),
    None: {},  # the fast config as it is: healthy
}




@pytest.fixture(scope="module")
def tiny_split() -> DatasetSplit:
    images, labels, _ = make_shapes(24, 32, "easy", seed=0)  # (24, 3, 32, 32) uint8
    return DatasetSplit(images, labels, list(SHAPE_CLASSES), TensorImageDataset(images, labels))


@pytest.mark.parametrize("mode", list(COLLAPSING), ids=lambda m: str(m))
def test_real_trainings_that_collapse_are_caught(mode, tiny_split, tmp_path, one_thread):
    cfg = replace(fast_config(get_preset("cpu-demo")), depth=1, n_local_crops=0, n_train=None,
                  batch_size=8, epochs=3, warmup_epochs=0, freeze_last_layer=0, log_every=1,
                  out_dir=str(tmp_path), collapse_patience=2, **COLLAPSING[mode])
    with warnings.catch_warnings(record=True) as records:  # the loop's own watchdog
        warnings.simplefilter("always")
        result = train(cfg, progress=False, train_split=tiny_split)
    assert result["steps"] == 3 * 3  # 24 images, batches of 8
    from_loop = [str(r.message) for r in records if issubclass(r.category, CollapseWarning)]
    assert len(from_loop) == (0 if mode is None else 1), from_loop
    assert all(m.startswith(f"{mode} collapse") for m in from_loop)

    epochs = [json.loads(line) for line in (result["run_dir"] / "epochs.jsonl").open()]
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    watchdog = CollapseWatchdog(cfg.out_dim, cfg.collapse_patience)
    returned, warned = feed(watchdog, [(e["teacher_entropy"], e["mean_entropy"]) for e in epochs])
    fired = [m for m in returned if m is not None]
    if mode is None:
        assert fired == [] and warned == [], epochs
    else:
        assert len(fired) == len(warned) == 1 and fired[0].startswith(f"{mode} collapse"), epochs


def test_a_resumed_run_continues_the_streak_without_warning_twice(tmp_path):
    path = tmp_path / "epochs.jsonl"
    path.write_text("".join(json.dumps({"epoch": e, "teacher_entropy": 0.0, "mean_entropy": 0.0})
                            + "\n" for e in range(2)))
    watchdog = CollapseWatchdog(out_dim=128, patience_epochs=3)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        watchdog.replay(path)  # two collapsed epochs before the interruption: no warning yet
        assert records == []
        assert watchdog.update(2, 0.0, 0.0) is not None  # the third in a row warns
    warned_before = CollapseWatchdog(out_dim=128, patience_epochs=2)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        warned_before.replay(path)  # it warned before the interruption: not again
        assert warned_before.update(2, 0.0, 0.0) is None
        assert records == []


def test_sinkhorn_centering_is_not_watched(tiny_split, tmp_path, one_thread):
    # with Sinkhorn-Knopp targets the centred softmax the diagnostics read may be flat while the
    # targets are balanced and sharp: the watchdog must not call that a uniform collapse
    cfg = replace(fast_config(get_preset("cpu-demo")), depth=1, n_local_crops=0, n_train=None,
                  batch_size=8, epochs=3, warmup_epochs=0, freeze_last_layer=0, log_every=1,
                  out_dir=str(tmp_path), collapse_patience=1, centering="sinkhorn",
                  **COLLAPSING["uniform"])
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        train(cfg, progress=False, train_split=tiny_split)
    assert not [r for r in records if issubclass(r.category, CollapseWarning)]

