"""The training config: presets, validation messages and the command line."""

from __future__ import annotations

import argparse
from dataclasses import fields, replace

import pytest

from minidino.__main__ import main
from minidino.config import (
    TrainConfig,
    fast_config,
)
from minidino.config_cli import add_config_arguments, config_from_args
from minidino.presets import PRESETS, get_preset


def parse(argv: list[str]) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return config_from_args(get_preset("cpu-demo"), parser.parse_args(argv))


def test_presets_are_valid_and_fast_config_shrinks_them():
    for cfg in PRESETS.values():
        small = fast_config(cfg)
        assert small.dataset == "shapes" and small.epochs <= 2 and small.out_dim <= cfg.out_dim


def test_cli_overrides_every_kind_of_field():
    cfg = parse(["--batch-size", "32", "--lr", "2e-3", "--global-scale", "0.3,0.9",
                 "--norm-last-layer", "false", "--n-train", "none", "--arch", "vit_tiny"])
    assert cfg.batch_size == 32 and cfg.lr == 2e-3 and cfg.global_scale == (0.3, 0.9)
    assert cfg.norm_last_layer is False and cfg.n_train is None and cfg.arch == "vit_tiny"
    assert cfg.out_dim == get_preset("cpu-demo").out_dim  # untouched fields keep the preset


def test_config_round_trips_through_json(tmp_path):
    cfg = replace(get_preset("cifar10"), lr=1e-4, global_scale=(0.5, 1.0))
    cfg.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json") == cfg


@pytest.mark.parametrize("argv, field", [
    (["--batch-size", "abc"], "--batch-size"),
    (["--global-scale", "0.4"], "global_scale"),
    (["--teacher-temp", "0"], "teacher_temp"),
    (["--student-temp", "-0.1"], "student_temp"),
    (["--center-momentum", "1.5"], "center_momentum"),
    (["--teacher-momentum", "-0.1"], "teacher_momentum"),
    (["--out-dim", "1"], "out_dim"),
    (["--local-size", "64"], "local_size"),
    (["--global-size", "30"], "global_size"),
    (["--arch", "resnet50"], "arch"),
    (["--device", "tpu"], "device"),
    (["--dataset", "folder"], "data_path"),
    (["--norm-last-layer", "maybe"], "--norm-last-layer"),
])
def test_bad_values_name_the_field(argv, field):
    with pytest.raises(ValueError, match=field):
        parse(argv)


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ValueError, match="cpu-demo"):
        get_preset("imagenet-22k")


def test_unknown_field_in_a_saved_config_is_named():
    with pytest.raises(ValueError, match="bogus"):
        TrainConfig.from_dict({"bogus": 1})


def test_every_field_has_a_help_text():
    missing = [f.name for f in fields(TrainConfig) if not f.metadata.get("help", "").strip()]
    assert missing == []


def test_train_help_shows_each_fields_reason_and_preset_value(capsys):
    assert main(["train", "--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    teacher_temp = next(f for f in fields(TrainConfig) if f.name == "teacher_temp")
    assert " ".join(teacher_temp.metadata["help"].split()) in shown
    assert f"[preset: {get_preset('cifar10').teacher_temp:g}]" in shown
    assert "[preset: X] is the value of the cifar10 preset" in shown
    assert "(default from the preset)" not in shown
