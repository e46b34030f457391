"""Bad input is refused with a message that names the field or option, the value and what is
allowed. One list, ROWS, drives both the tests (one per row) and the table in docs/bad-input.md:
every row's documented message must be the message the code gives today.

Regenerate the table after changing a message: `python tests/test_bad_input.py`.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from minidino.__main__ import main
from minidino.config import TrainConfig, fast_config
from minidino.config_checks import DIFFICULTIES, check_world_size
from minidino.presets import get_preset

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-input.md"
MAX_CELL = 170  # longer messages are cut in the table with " ..." (the test then checks a prefix)


@dataclass(frozen=True)
class Row:
    input: str  # what is wrong, in words
    example: str  # a command line (`python -m minidino ...`) or a Python expression; DIR: a folder
    names: tuple[str, ...]  # words the message must contain: the field or option and the value


def cli(input: str, args: str, *names: str) -> Row:
    return Row(input, f"python -m minidino {args}", names)


ROWS: list[Row] = [
    cli("an integer option that is not a number", "train --batch-size abc", "batch_size", "abc"),
    cli("`none` for a field that needs a value", "train --batch-size none", "batch_size", "None"),
    cli("a yes/no option that is neither", "train --norm-last-layer maybe", "norm_last_layer"),
    cli("a pair given as one number", "train --global-scale 0.4", "global_scale", "0.4"),
    cli("a pair in the wrong order", "train --local-scale 0.5,0.1", "local_scale", "0.5"),
    cli("a number that is not finite", "train --lr nan", "lr", "nan"),
    cli("teacher temperature 0", "train --teacher-temp 0", "teacher_temp", "0.0"),
    cli("negative student temperature", "train --student-temp -0.1", "student_temp", "-0.1"),
    cli("a momentum above 1", "train --center-momentum 1.5", "center_momentum", "1.5"),
    cli("a momentum below 0", "train --teacher-momentum -0.1", "teacher_momentum", "-0.1"),
    cli("fewer than 2 prototypes (K < 2)", "train --out-dim 1", "out_dim", "1"),
    cli("a local crop larger than the global crop", "train --fast --local-size 64",
        "local_size", "64", "global_size=32"),
    cli("a global crop shrunk below the local crop", "train --fast --global-size 8",
        "local_size", "global_size=8"),
    cli("an input size not divisible by the patch size", "train --global-size 30",
        "global_size", "30", "patch_size"),
    cli("a local size not divisible by the patch size", "train --fast --local-size 12",
        "local_size", "12", "patch_size=8"),
    cli("a blur too wide for the crops", "train --fast --blur-sigma 0.1,6",
        "blur_sigma", "6.0"),
    cli("heads that do not divide the width", "train --fast --num-heads 5", "num_heads", "5"),
    cli("a zero-sized model", "train --embed-dim 0", "embed_dim", "0"),
    cli("an unknown architecture", "train --arch resnet50", "arch", "resnet50"),
    cli("an unknown device", "train --device tpu", "device", "tpu"),
    cli("an unknown dataset", "train --dataset mnist", "dataset", "mnist"),
    cli("an unknown shapes difficulty", "train --difficulty extreme", "difficulty", "extreme"),
    cli("an unknown data mode", "train --data-mode gpu", "data_mode", "gpu"),
    cli("a folder dataset without a folder", "train --dataset folder", "data_path"),
    cli("a folder given to a built-in dataset", "train --data-path DIR", "data_path", "DIR"),
    cli("a folder that does not exist", "train --fast --dataset folder "
        "--data-path DIR/missing --out-dir DIR/runs", "DIR/missing"),
    cli("a folder without class folders", "train --fast --dataset folder --data-path DIR/flat "
        "--out-dir DIR/runs", "DIR/flat", "class folders"),
    cli("a drop-path rate of 1", "train --drop-path 1", "drop_path", "1.0"),
    cli("a probability above 1", "train --jitter-p 2", "jitter_p", "2.0"),
    cli("negative weight decay", "train --weight-decay -1", "weight_decay", "-1.0"),
    cli("zero epochs", "train --epochs 0", "epochs", "0"),
    cli("more warm-up epochs than epochs", "train --fast --warmup-epochs 5",
        "warmup_epochs", "5", "epochs=2"),
    cli("a teacher warm-up longer than the run", "train --fast --warmup-teacher-temp-epochs 3",
        "warmup_teacher_temp_epochs", "3"),
    cli("fewer training images than one batch", "train --fast --n-train 8", "n_train", "8",
        "batch_size=32"),
    cli("a batch larger than the preset's image count", "train --fast --batch-size 256",
        "n_train", "batch_size=256", "--n-train"),
    cli("zero steps", "train --max-steps 0", "max_steps", "0"),
    cli("a negative collapse patience", "train --collapse-patience -1", "collapse_patience",
        "-1"),
    cli("an empty run name", "train --run-name ''", "run_name", "''"),
    cli("a LayerScale gain of 0", "train --layerscale 0", "layerscale", "0.0"),
    cli("iBOT switched on with a word that is not yes/no", "train --ibot maybe", "ibot", "maybe"),
    cli("a separate patch head given a number", "train --ibot-separate-head 2",
        "ibot_separate_head", "2"),
    cli("fewer than 2 patch prototypes", "train --ibot-out-dim 1", "ibot_out_dim", "1"),
    cli("a patch K other than out_dim with a shared head", "train --ibot true --ibot-out-dim 512",
        "ibot_out_dim", "512", "out_dim=4096"),
    cli("a mask ratio range in the wrong order", "train --mask-ratio 0.5,0.1", "mask_ratio",
        "0.5"),
    cli("a mask probability above 1", "train --mask-prob 1.5", "mask_prob", "1.5"),
    cli("a patch teacher temperature of 0", "train --ibot-teacher-temp 0", "ibot_teacher_temp",
        "0.0"),
    cli("a patch center momentum above 1", "train --ibot-center-momentum 2",
        "ibot_center_momentum", "2.0"),
    cli("a negative patch loss weight", "train --ibot-loss-weight -1", "ibot_loss_weight",
        "-1.0"),
    cli("a negative KoLeo weight", "train --koleo-weight -0.1", "koleo_weight", "-0.1"),
    cli("an option that does not exist", "train --bogus 1", "--bogus"),
    cli("an unknown preset", "train --preset imagenet", "--preset", "imagenet"),
    cli("an unknown command", "fit", "command", "fit"),
    cli("k = 0 neighbours", "eval DIR/run.pt --k 0", "--k", "0"),
    cli("an unknown backbone to evaluate", "eval DIR/run.pt --which both", "--which", "both"),
    cli("a checkpoint that does not exist", "eval DIR/missing.pt", "DIR/missing.pt"),
    cli("a corrupt checkpoint", "eval DIR/corrupt.pt", "DIR/corrupt.pt", "corrupt"),
    cli("a checkpoint from another architecture (its config says vit_tiny, its weights are "
        "vit_nano)", "eval DIR/other-arch.pt", "missing keys", "blocks.10.attn", "shape mismatches",
        "(96, 96) vs model (192, 192)"),
    cli("an unknown dataset to download", "download mnist", "name", "mnist"),
    cli("downloading your own folder", "download folder", "name", "folder"),
    Row("a global batch smaller than the number of processes",
        "check_world_size(replace(cfg, batch_size=4), world_size=8)", ("batch_size", "4", "8")),
    Row("a global batch that does not split over the processes",
        "check_world_size(replace(cfg, batch_size=64), world_size=3)",
        ("batch_size", "64", "3 processes")),
    Row("a saved config with an unknown field", "TrainConfig.from_dict({'bogus': 1})",
        ("bogus",)),
    Row("a saved config with a value of the wrong type",
        "TrainConfig.from_dict({'batch_size': '64'})", ("batch_size", "'64'")),
]


@pytest.fixture(autouse=True)
def not_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows without --fast document the presets as they are: fast mode must not leak in
    from the environment (`make test` and CI set it)."""
    monkeypatch.delenv("MINIDINO_FAST", raising=False)
    monkeypatch.delenv("CI", raising=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_inputs(tmp_path_factory.mktemp("bad-input"))


def make_inputs(root: Path) -> Path:
    """The files the examples refer to: a corrupt checkpoint, one from another architecture,
    a folder of loose files without class folders."""
    from minidino.step import build_student

    (root / "corrupt.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    nano = fast_config(get_preset("cpu-demo"))  # vit_nano, depth 2
    weights = build_student(nano).state_dict()
    tiny = replace(nano, arch="vit_tiny", depth=None)
    torch.save({"teacher": weights, "student": weights, "config": tiny.__dict__, "step": 0},
               root / "other-arch.pt")
    torch.save({"teacher": weights, "config": nano.__dict__, "step": 0}, root / "run.pt")
    (root / "flat").mkdir()
    (root / "flat" / "photo.png").write_bytes(b"")
    return root


def message_of(row: Row, root: Path) -> str:
    """Run the example; return its one-line error message with `root` written as DIR."""
    example = row.example.replace("DIR", str(root))
    if example.startswith("python -m minidino "):
        out, errors = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(errors):
            rc = main(shlex.split(example)[3:])
        err = errors.getvalue()
        assert rc == 2, f"exit status {rc}, expected 2; stderr: {err}"
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("minidino: error: "), err
        text = lines[0].removeprefix("minidino: error: ")
    else:
        namespace = {"TrainConfig": TrainConfig, "replace": replace,
                     "check_world_size": check_world_size, "cfg": get_preset("cpu-demo")}
        with pytest.raises(ValueError) as info:
            eval(example, namespace)
        text = str(info.value)
    return text.replace(str(root), "DIR")


def cell(text: str) -> str:
    short = text if len(text) <= MAX_CELL else text[:MAX_CELL].rstrip() + " ..."
    return short.replace("|", "\\|")


def table(messages: list[str]) -> str:
    lines = ["| input | example | message |", "| --- | --- | --- |"]
    for row, text in zip(ROWS, messages, strict=True):
        lines.append(f"| {row.input} | `{cell(row.example)}` | `{cell(text)}` |")
    return "\n".join(lines)


def doc_rows() -> dict[tuple[str, str], str]:
    """(input, example) -> message, from the table in docs/bad-input.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 3 and cells[1].startswith("`"):
            rows[(cells[0], cells[1].strip("`"))] = cells[2].strip("`")
    return rows


def test_every_row_is_documented_and_every_documented_row_is_tested() -> None:
    documented = doc_rows()
    listed = {(r.input, cell(r.example)) for r in ROWS}
    assert len(listed) == len(ROWS), "two rows say the same thing"
    assert set(documented) == listed, (
        f"missing from docs/bad-input.md: {sorted(listed - set(documented))}; documented but "
        f"not tested: {sorted(set(documented) - listed)}; run python tests/test_bad_input.py")


@pytest.mark.parametrize("row", ROWS, ids=[r.input for r in ROWS])
def test_bad_input_is_refused_with_the_documented_message(row, inputs) -> None:
    text = message_of(row, inputs)
    assert all(name in text for name in row.names), f"{row.names} not all in: {text}"
    assert "Traceback" not in text and "\n" not in text
    documented = doc_rows().get((row.input, cell(row.example)))
    assert documented == cell(text), ("docs/bad-input.md is out of date; run "
                                      "python tests/test_bad_input.py")


def test_a_bad_option_exits_with_status_2_and_one_line_in_a_real_process() -> None:
    done = subprocess.run([sys.executable, "-m", "minidino", "train", "--fast", "--local-size",
                           "64"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "minidino: error: --local-size '64': local_size=64 is not allowed: a local crop cannot "
        "be larger than a global crop (global_size=32)"]


def test_world_size_one_and_even_splits_pass() -> None:
    cfg = get_preset("cpu-demo")  # batch_size 64
    for world_size in (1, 2, 4, 64):
        check_world_size(cfg, world_size)
    with pytest.raises(ValueError, match="world_size=0"):
        check_world_size(cfg, 0)


def test_the_config_knows_the_shapes_difficulties_and_the_arch_sizes(monkeypatch) -> None:
    from minidino import vit
    from minidino.shapes import SHAPES_STYLES
    from minidino.vit import VIT_SIZES as ARCH_SIZES

    assert set(DIFFICULTIES) == set(SHAPES_STYLES)
    built: dict[str, int] = {}
    monkeypatch.setattr(vit, "VisionTransformer", lambda **kwargs: built.update(kwargs))
    for arch, sizes in ARCH_SIZES.items():  # the factories' sizes, without building a model
        vit.VIT_FACTORIES[arch]()
        assert (built["embed_dim"], built["depth"], built["num_heads"]) == sizes, arch


def write_doc() -> None:
    """Rewrite the table in docs/bad-input.md from ROWS and today's messages."""
    with tempfile.TemporaryDirectory() as tmp:
        root = make_inputs(Path(tmp))
        messages = [message_of(row, root) for row in ROWS]
    start, end = "<!-- table: generated by tests/test_bad_input.py -->", "<!-- end of table -->"
    before, rest = DOC.read_text().split(start)
    DOC.write_text(f"{before}{start}\n{table(messages)}\n{end}{rest.split(end)[1]}")


if __name__ == "__main__":
    write_doc()
