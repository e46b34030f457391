"""Several training runs side by side on one machine, and one table that compares them.

    python -m minidino sweep --preset cifar10 --minutes 8 --knn-every 5 \\
        --run baseline "" --run no-blur "--blur false" --run lr-2x "--lr 1e-3"

Why: one change at a time from a baseline is how a recipe is found (and how a learner checks a
claim of the lessons), and one small ViT uses only a fraction of a large GPU, so several runs fit
on it at once. Each run is its own process (`python -m minidino train ...`) with its own run
folder, log and checkpoints, so one run failing leaves the others untouched.

How a time budget becomes epochs: with `--minutes M`, every run first trains a few steps (all
runs at once, so each is measured under the load it will share) and its speed gives the number of
epochs that fit in M minutes of training; the schedules then span exactly those epochs. Without
`--minutes` the runs train for the epochs of their config.

At the end one table (also written to `sweep.md` and `summary.json` in the sweep folder): what
each run changed, its speed, its kNN at each evaluation (`--knn-every N`), the final kNN of
teacher and student, the teacher's entropy and the prototypes it uses. A sweep run again with the
same name reuses the runs that already finished.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minidino.config import (
    TrainConfig,
    fast_config,
    fast_mode,
)
from minidino.config_cli import add_config_arguments, config_from_args
from minidino.presets import get_preset

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class SweepRun:
    """One run of a sweep: its name and the command-line options it changes."""

    name: str
    options: list[str]  # e.g. ["--lr", "1e-3"]
    epochs: int | None = None  # set by the time budget
    status: str = "waiting"
    times: tuple[float, float] = (0.0, 0.0)  # wall-clock start and end of its training process
    result: dict[str, Any] = field(default_factory=dict)


def parse_runs(pairs: list[tuple[str, str]], seeds: list[int] | None = None) -> list[SweepRun]:
    """`[(name, "options"), ...]` -> runs; with several `seeds`, one run per name and seed
    (named `name-s1`, ...). Names must be unique and usable as folder names."""
    if not pairs:
        raise ValueError("a sweep needs at least one run: --run NAME \"OPTIONS\" "
                         "(OPTIONS may be \"\" for the preset itself)")
    runs, several_seeds = [], len(seeds or []) > 1
    for name, options in pairs:
        if not _NAME.match(name):
            raise ValueError(f"run name {name!r} is not allowed: letters, digits, '.', '_' "
                             "and '-', starting with a letter or digit")
        tokens = shlex.split(options)
        for seed in seeds or [None]:
            extra = [] if seed is None else ["--seed", str(seed)]
            runs.append(SweepRun(f"{name}-s{seed}" if several_seeds else name, tokens + extra))
    names = [r.name for r in runs]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise ValueError(f"run names must be unique; given twice: {doubled}")
    return runs


def run_config(preset: str, common: list[str], run: SweepRun) -> TrainConfig:
    """The config a run trains with (the preset, then the common options, then the run's own),
    built here so that a typo fails before anything starts."""
    parser = argparse.ArgumentParser(prog=f"run {run.name!r}", add_help=False,
                                     exit_on_error=False)
    add_config_arguments(parser)
    try:
        args, unknown = parser.parse_known_args(common + run.options)
    except argparse.ArgumentError as err:
        raise ValueError(f"run {run.name!r}: {err}") from None
    if unknown:
        raise ValueError(f"run {run.name!r}: unknown option(s) {unknown}; any config field is "
                         "allowed as --field-name VALUE (see: python -m minidino train --help)")
    base = fast_config(get_preset(preset)) if fast_mode() else get_preset(preset)
    return config_from_args(base, args)  # as `python -m minidino train` will build it


def _steady_rate(run_dir: Path) -> tuple[float, float]:
    """(steps per second, images per second) of a run's training, from the `time` of its
    logged steps, leaving out the first third (start-up, compilation)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    batch = json.loads((run_dir / "config.json").read_text())["batch_size"]
    if not records:
        raise ValueError(f"{run_dir} logged no step")
    first, last = (records[len(records) // 3], records[-1]) if len(records) > 2 else \
        ({"step": -1, "time": 0.0}, records[-1])
    steps_per_s = (last["step"] - first["step"]) / max(last["time"] - first["time"], 1e-9)
    return steps_per_s, steps_per_s * batch


class Sweep:
    """Runs `runs` of `preset` (plus `common` options) as parallel processes in `folder`."""

    def __init__(self, preset: str, runs: list[SweepRun], folder: str | Path,
                 common: list[str] | None = None, parallel: int | None = None,
                 progress: bool = True) -> None:
        self.preset, self.runs, self.folder = preset, runs, Path(folder)
        self.common = list(common or [])
        self.configs = {r.name: run_config(preset, self.common, r) for r in runs}  # fail fast
        if parallel is not None and parallel < 1:
            raise ValueError(f"parallel={parallel} is not allowed: must be a positive integer")
        self.parallel = parallel or len(runs)
        self.progress = progress

    # ------------------------------------------------------------------ processes
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        devices = {cfg.device for cfg in self.configs.values()}
        on_cpu = devices == {"cpu"} or not _cuda_available()
        if on_cpu and "OMP_NUM_THREADS" not in env:  # share the cores instead of fighting
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.parallel))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _launch_all(self, todo: list[SweepRun], folder: Path, extra: dict[str, list[str]],
                    phase: str) -> dict[str, int]:
        """Start every run of `todo` (at most `self.parallel` at once), wait; exit codes."""
        folder.mkdir(parents=True, exist_ok=True)
        queue, running, codes = list(todo), {}, {}
        env = self._env()
        try:
            while queue or running:
                while queue and len(running) < self.parallel:
                    run = queue.pop(0)
                    command = [sys.executable, "-m", "minidino", "train", "--preset",
                               self.preset, *self.common, *run.options, *extra[run.name],
                               "--out-dir", str(folder), "--run-name", run.name, "--no-progress"]
                    log = (folder / f"{run.name}.log").open("w")
                    log.write(shlex.join(command) + "\n")
                    log.flush()
                    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                               env=env)
                    running[run.name] = (process, log, time.time(), run)
                    self._say(f"{phase}: started {run.name} (pid {process.pid})")
                for name, (process, log, started, run) in list(running.items()):
                    if process.poll() is None:
                        continue
                    log.close()
                    codes[name] = process.returncode
                    run.times = (started, time.time())
                    del running[name]
                    self._say(f"{phase}: {name} finished (exit {process.returncode}) after "
                              f"{run.times[1] - started:.0f} s")
                time.sleep(0.2)
        except KeyboardInterrupt:  # each run checkpoints at its next step and stops
            for process, *_ in running.values():
                process.send_signal(signal.SIGINT)
            for name, (process, log, *_) in running.items():
                try:
                    process.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    process.kill()
                log.close()
                codes[name] = 130
            raise
        return codes

    def _say(self, text: str) -> None:
        if self.progress:
            print(f"minidino sweep: {text}", flush=True)

    # ------------------------------------------------------------------ the sweep
    def calibrate(self, todo: list[SweepRun], minutes: float, steps: int = 30) -> None:
        """Set each run's epochs so that its training takes about `minutes`."""
        folder = self.folder / "_calibration"
        extra = {r.name: ["--max-steps", str(steps), "--log-every", str(max(1, steps // 10)),
                          "--knn-every", "0"] for r in todo}
        codes = self._launch_all(todo, folder, extra, "measuring speed")
        for run in todo:
            cfg = self.configs[run.name]
            if codes[run.name] != 0:
                run.status = f"failed while measuring speed: {_last_line(folder, run.name)}"
                continue
            steps_per_s, _ = _steady_rate(folder / run.name)
            steps_per_epoch = json.loads((folder / run.name / "run.json").read_text())[
                "steps_per_epoch"]
            epochs = max(1, int(minutes * 60 * steps_per_s / steps_per_epoch))
            warm = max(cfg.warmup_epochs, cfg.warmup_teacher_temp_epochs)
            if warm > epochs:
                run.status = (f"skipped: {minutes:g} min fit {epochs} epochs, fewer than the "
                              f"{warm} warm-up epochs; give more --minutes or fewer warm-up "
                              "epochs")
                continue
            run.epochs = epochs
            self._say(f"{run.name}: {steps_per_s:.2f} steps/s -> {epochs} epochs "
                      f"of {steps_per_epoch} steps")

    def run(self, minutes: float | None = None, calibration_steps: int = 30) -> list[SweepRun]:
        """Train every run (reusing those already finished in the folder); return the runs
        with their results."""
        if minutes is not None and not minutes > 0:
            raise ValueError(f"minutes={minutes} is not allowed: the training time of each run "
                             "must be > 0 (or None: the epochs of its config)")
        todo = []
        for run in self.runs:
            done = self.folder / run.name / "sweep-result.json"
            if done.exists() and json.loads(done.read_text())["options"] == run.options:
                saved = json.loads(done.read_text())
                run.epochs, run.status, run.times = saved["epochs"], "ok (reused)", \
                    tuple(saved["times"])
                continue
            todo.append(run)
        if todo and minutes is not None:
            self.calibrate(todo, minutes, calibration_steps)
            todo = [r for r in todo if r.epochs is not None]
        extra = {r.name: [] if r.epochs is None else ["--epochs", str(r.epochs)] for r in todo}
        codes = self._launch_all(todo, self.folder, extra, "training") if todo else {}
        for run in todo:
            if codes[run.name] == 0:
                run.status = "ok"
                (self.folder / run.name / "sweep-result.json").write_text(json.dumps(
                    {"options": run.options, "epochs": run.epochs, "times": run.times}) + "\n")
            else:
                run.status = f"failed (exit {codes[run.name]}): {_last_line(self.folder, run.name)}"
        for run in self.runs:
            if run.status.startswith("ok"):
                run.result = summarize(self.folder / run.name)
        self.write_report()
        return self.runs

    def write_report(self) -> str:
        """The table as Markdown, printed and written to sweep.md (and summary.json)."""
        table = format_table(self.preset, self.common, self.runs)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "sweep.md").write_text(table + "\n")
        (self.folder / "summary.json").write_text(json.dumps(
            [{"name": r.name, "options": r.options, "epochs": r.epochs, "status": r.status,
              "times": r.times, **r.result} for r in self.runs], indent=1) + "\n")
        print(table, flush=True)
        return table


def summarize(run_dir: Path) -> dict[str, Any]:
    """What the table shows of one finished run folder."""
    epochs = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()
              if line.strip()]
    knn = [r for r in epochs if "knn_teacher" in r]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    _, images_per_s = _steady_rate(run_dir)
    diag = [r for r in epochs if "teacher_entropy" in r]
    return {
        "epochs_trained": epochs[-1]["epoch"] + 1 if epochs else 0,
        "train_seconds": metrics[-1]["time"] if metrics else 0.0,
        "images_per_s": images_per_s,
        "knn_curve": [(r["epoch"] + 1, r["knn_teacher"]) for r in knn],
        "knn_teacher": knn[-1]["knn_teacher"] if knn else None,
        "knn_student": knn[-1]["knn_student"] if knn else None,
        "teacher_entropy": diag[-1]["teacher_entropy"] if diag else None,
        "prototypes_used": diag[-1]["prototypes_used"] if diag else None,
    }


def format_table(preset: str, common: list[str], runs: list[SweepRun]) -> str:
    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    lines = [f"Sweep of preset {preset}" + (f" with {shlex.join(common)}" if common else ""),
             "",
             "| run | changes | epochs | train s | images/s | kNN teacher (epoch: %) | "
             "kNN teacher | kNN student | H(teacher) | prototypes used | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        r = run.result
        curve = " ".join(f"{e}:{v:.1f}" for e, v in r.get("knn_curve", [])) or "-"
        lines.append(
            f"| {run.name} | {shlex.join(run.options) or '(preset)'} | "
            f"{r.get('epochs_trained', run.epochs or '-')} | {num(r.get('train_seconds'), '.0f')} "
            f"| {num(r.get('images_per_s'), '.0f')} | {curve} | "
            f"{num(r.get('knn_teacher'), '.1f')} | {num(r.get('knn_student'), '.1f')} | "
            f"{num(r.get('teacher_entropy'), '.2f')} | {num(r.get('prototypes_used'), '.0f')} | "
            f"{run.status} |")
    return "\n".join(lines)


def _last_line(folder: Path, name: str) -> str:
    path = folder / f"{name}.log"
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.exists() \
        else []
    return lines[-1][:200] if lines else "(no output)"


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
