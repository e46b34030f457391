"""Command line: `python -m minidino {demo,train,eval,download,presets} ...`.

Examples:
    python -m minidino demo                              # the main job, about 5 minutes on a CPU
    python -m minidino train --preset cifar10 --epochs 50 --batch-size 256
    python -m minidino train --preset cifar10 --resume runs/cifar10/checkpoint.pt
    python -m minidino train --preset cifar10 --resume auto       # after a stop or a crash
    torchrun --nproc_per_node 4 -m minidino train --preset cifar10  # 4 GPUs, DDP
    python -m minidino eval runs/cifar10/checkpoint.pt --linear
    python -m minidino export runs/cpu-demo/checkpoint.pt minidino/assets/cpu-demo-teacher.pt
    python -m minidino sweep --preset cifar10 --minutes 8 --knn-every 5 \
        --run baseline "" --run no-blur "--blur false"   # runs side by side, one table
    python -m minidino download cifar10
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from minidino.config import (
    TrainConfig,
    fast_config,
    fast_mode,
)
from minidino.config_cli import add_config_arguments, config_from_args
from minidino.presets import PRESETS, get_preset

# The preset of each command when --preset is not given; its values are shown in --help.
_DEFAULT_PRESET = {"demo": "cpu-demo", "train": "cifar10", "sweep": "cifar10"}


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, `minidino: error: ...` and exit status 2, instead of
    the usage block (which lists every config option for `train`)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"minidino: error: {message} (see: {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: must be a positive integer")
    return value


def _resolve(args: argparse.Namespace, default_preset: str) -> TrainConfig:
    cfg = get_preset(args.preset or default_preset)
    if args.fast or fast_mode():
        cfg = fast_config(cfg)
    return config_from_args(cfg, args)


def _sweep(args: argparse.Namespace) -> None:
    import os
    from dataclasses import fields

    from minidino.sweep import Sweep, parse_runs

    if args.fast:
        os.environ["MINIDINO_FAST"] = "1"  # the runs' processes inherit it
    common = [token for f in fields(TrainConfig) if getattr(args, f.name) is not None
              for token in (f"--{f.name.replace('_', '-')}", getattr(args, f.name))]
    try:
        seeds = None if args.seeds is None else [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r} is not allowed: integers separated by "
                         "commas, e.g. 0,1") from None
    runs = parse_runs([tuple(pair) for pair in args.run], seeds)
    base = config_from_args(get_preset(args.preset), args)
    folder = os.path.join(base.out_dir, "sweeps", args.name)
    Sweep(args.preset, runs, folder, common, args.parallel).run(args.minutes,
                                                                args.calibration_steps)


def _quiet_about_dead_peers() -> None:
    """Keep a dead worker's broken connection from printing a traceback of its own.

    When a DataLoader worker dies while the main process is handing it a shared tensor,
    multiprocessing's fd-sharing thread finds the connection broken and prints the traceback
    through sys.excepthook. The run then stops with one line that says what happened and what
    to try (`DataLoaderWorkerError`), so that traceback says nothing more; anything else is still
    printed.
    """
    default = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if issubclass(kind, (ConnectionError, EOFError)):
            return
        default(kind, value, tb)

    sys.excepthook = hook


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m minidino", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("demo", "train cpu-demo on the built-in dataset and report kNN"),
                            ("train", "train with a preset; any config field can be overridden")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--preset", choices=sorted(PRESETS), default=None)
        p.add_argument("--fast", action="store_true", help="tiny model, a few steps (as in CI)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        if name == "train":
            p.add_argument("--resume", default=None,
                           help="a checkpoint.pt to continue from, or 'auto': the newest valid "
                                "checkpoint in the run folder (a fresh run when there is none)")
        add_config_arguments(p, _DEFAULT_PRESET[name], get_preset(_DEFAULT_PRESET[name]))
    p = sub.add_parser("sweep", help="several runs side by side on one machine, one table; "
                       "config options given here apply to every run")
    p.add_argument("--preset", choices=sorted(PRESETS), default=_DEFAULT_PRESET["sweep"])
    p.add_argument("--run", nargs=2, action="append", metavar=("NAME", "OPTIONS"), default=[],
                   help='one run: its name and the options it changes, e.g. --run lr-2x '
                        '"--lr 1e-3" (repeat for each run; "" trains the preset as it is)')
    p.add_argument("--minutes", type=float, default=None,
                   help="training minutes per run; the epochs are sized from each run's "
                        "measured speed (default: the epochs of the config)")
    p.add_argument("--seeds", default=None, help="e.g. 0,1: every run once per seed")
    p.add_argument("--parallel", type=_positive_int, default=None,
                   help="runs at the same time (default: all of them)")
    p.add_argument("--name", default="sweep", help="the sweep folder: <out-dir>/sweeps/<name>")
    p.add_argument("--calibration-steps", type=_positive_int, default=30,
                   help="steps each run trains to measure its speed (with --minutes)")
    p.add_argument("--fast", action="store_true", help="tiny runs (as in CI)")
    add_config_arguments(p, _DEFAULT_PRESET["sweep"], get_preset(_DEFAULT_PRESET["sweep"]))
    p = sub.add_parser("eval", help="kNN (and linear probe) of a checkpoint's backbone")
    p.add_argument("checkpoint")
    p.add_argument("--which", choices=("teacher", "student"), default="teacher")
    p.add_argument("--linear", action="store_true", help="also train a linear probe")
    p.add_argument("--k", type=_positive_int, default=20, help="neighbours for kNN")
    p = sub.add_parser("export", help="save a checkpoint's backbone and config to a small file")
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--which", choices=("teacher", "student"), default="teacher")
    p = sub.add_parser("download", help="download a dataset into data/")
    p.add_argument("name")
    p.add_argument("--root", default="data")
    sub.add_parser("presets", help="list the presets")
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help (0) or a bad option (2), already printed on one line
        return stop.code if isinstance(stop.code, int) else 2

    try:
        if args.command == "demo":
            from minidino.demo import run_demo

            run_demo(_resolve(args, _DEFAULT_PRESET["demo"]), progress=not args.no_progress)
        elif args.command == "train":
            from minidino.train import train

            cfg = _resolve(args, _DEFAULT_PRESET["train"])
            train(cfg, resume=args.resume, progress=not args.no_progress)
        elif args.command == "sweep":
            _sweep(args)
        elif args.command == "eval":
            from minidino.held_out import evaluate_checkpoint

            evaluate_checkpoint(args.checkpoint, which=args.which, linear=args.linear, k=args.k)
        elif args.command == "export":
            from minidino.pretrained import export_backbone

            print(f"wrote {export_backbone(args.checkpoint, args.out, which=args.which)}")
        elif args.command == "download":
            from minidino.data import download

            download(args.name, args.root)
        elif args.command == "presets":
            for name, cfg in PRESETS.items():
                print(f"{name}: {cfg}")
    except (ValueError, OSError, RuntimeError) as err:  # a ConfigError is a ValueError
        print(f"minidino: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"minidino: {err or 'interrupted'}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    _quiet_about_dead_peers()
    sys.exit(main())
