"""Where a training step's time goes: torch.profiler over a few steps, summed by kind of work.

    python -m tools.profile_step          # on CUDA: cifar10, batch 1024, eager and the fast path
    python -m tools.profile_step --modes eager --batch-size 512 --trace-dir traces

It profiles the end-to-end device path (the batched multi-crop, then `train_step`) after some
untimed warm-up steps, exports the profiler's Chrome trace (open it in https://ui.perfetto.dev),
and reads the trace back to print, per profiled mode:
- the step's time without the profiler, and the host's time to issue one step (the span of each
  step's `record_function`): when the host takes as long as the step, the GPU waits on launches;
- on CUDA, the device's busy time per step (the union of kernels, copies and sets), its idle
  time and the number of idle gaps longer than 10 µs;
- kernel launches per step (runtime and driver calls, and CUDA-graph launches separately), and
  the calls that make the host wait for the device (synchronisations, blocking copies);
- the kernels' time per step by category (matmul, attention, normalisation, softmax and loss,
  elementwise, reductions, copies, random numbers, optimizer and EMA, fused by torch.compile,
  other),
  and the slowest kernels. On a CPU the same table sums the operators' self time instead.
The summaries are plain functions of the trace's events (`summarize`), tested on constructed
traces in tests/test_profile_step.py.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import re
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from minidino.augment import crop_config
from minidino.batches import DeviceBatches
from minidino.config import TrainConfig, fast_config
from minidino.config_checks import COMPILE_MODES
from minidino.device import pick_device
from minidino.presets import get_preset
from minidino.step import build_parts, train_step
from tools.bench_train import endless, random_images

STEP_MARK = "minidino_step"  # the record_function around each profiled step
GAP_US = 10.0  # device idle stretches longer than this are counted as gaps
# (category, pattern) in order: the first pattern found in a kernel's or operator's lower-cased
# name decides. The kernels that torch.compile writes (triton_poi_fused_add_gelu_3, ...) list
# the operators they fuse: only TRITON_NAMED is looked for in them, the rest count as fused.
CATEGORIES = (
    ("optimizer and EMA", r"multi_tensor_apply|_foreach_|fused_adam|adamw|\blerp"),
    ("attention", r"flash|fmha|attention|sdpa|scaled_dot_product"),
    ("matmul", r"gemm|xmma|cutlass|cublas|nvjet|triton_tem_fused_(?:add)?mm|aten::(?:mm|addmm|bmm|"
               r"baddbmm|matmul)\b|convolution"),  # the patch embedding is a convolution
    ("softmax and loss", r"softmax|cross_entropy|nll_loss"),
    ("random numbers", r"philox|bernoulli|uniform_|normal_|\brand|distribution"),
    ("normalisation", r"layer_norm|layernorm|batch_norm|group_norm|vector_norm|\bnorm\b|rsqrt"),
    ("copies", r"copy|memcpy|memset|\bcat\b|cat_|concat|index|gather|scatter|fill|clone|"
               r"contiguous|_to_copy|transpose|permute|\bpad"),
    ("reductions", r"reduce|\bsum\b|aten::sum|aten::mean|amax|argmax|\bmax\b|aten::max|var_mean"),
    ("elementwise", r"elementwise|vectorized|unrolled|gelu|aten::(?:add|sub|mul|div|where|exp|"
                    r"pow|sqrt|clamp|neg|abs|lt|gt|eq|ge|le)_?\b|triton_poi"),
    ("fused by torch.compile", r"triton_|compiledfxgraph"),  # on a CPU: its C++ kernels
)
TRITON_NAMED = ("matmul", "softmax and loss", "normalisation", "fused by torch.compile")
LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
                "cudaLaunchCooperativeKernel")
GRAPH_CALLS = ("cudaGraphLaunch", "cuGraphLaunch")
SYNC_CALLS = ("cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize",
              "cudaMemcpy", "cuCtxSynchronize", "cuStreamSynchronize", "cuEventSynchronize")


def category(name: str) -> str:
    """The kind of work a kernel or operator `name` does (one of CATEGORIES' names, or other)."""
    low = name.lower()
    named = TRITON_NAMED if low.startswith("triton_") else tuple(cat for cat, _ in CATEGORIES)
    return next((cat for cat, pattern in CATEGORIES if cat in named and re.search(pattern, low)),
                "other")


def self_times(ops: list[dict[str, Any]]) -> list[float]:
    """Each operator's self time in µs: its duration less that of the operators nested in it on
    the same thread (the trace's `ts` and `dur`, in µs). Same order as `ops`."""
    out = [float(op["dur"]) for op in ops]
    threads: dict[Any, list[int]] = defaultdict(list)
    for i, op in enumerate(ops):
        threads[(op.get("pid"), op.get("tid"))].append(i)
    for members in threads.values():
        members.sort(key=lambda i: (ops[i]["ts"], -ops[i]["dur"]))
        open_ops: list[int] = []  # the chain of operators that enclose the current one
        for i in members:
            start = ops[i]["ts"]
            while open_ops and ops[open_ops[-1]]["ts"] + ops[open_ops[-1]]["dur"] <= start:
                open_ops.pop()
            if open_ops:
                out[open_ops[-1]] -= ops[i]["dur"]  # only the direct parent loses it
            open_ops.append(i)
    return out


def busy_and_gaps(intervals: list[tuple[float, float]], gap_us: float = GAP_US
                  ) -> tuple[float, float, int]:
    """(busy, idle, gaps) of (start, end) intervals in µs: the length of their union, the time
    between the first start and the last end that none covers, and how many of those idle
    stretches last longer than `gap_us`."""
    if not intervals:
        return 0.0, 0.0, 0
    busy = idle = 0.0
    gaps = 0
    (start, end), *rest = sorted(intervals)
    for s, e in rest:
        if s > end:  # a stretch with nothing running
            busy += end - start
            idle += s - end
            gaps += (s - end) > gap_us
            start, end = s, e
        else:
            end = max(end, e)
    return busy + end - start, idle, gaps


def summarize(events: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """Per-step figures of a Chrome trace's events (`traceEvents`) covering `steps` steps.

    On CUDA ("kernel" events present) the categories sum kernel time; otherwise they sum the
    self time of the CPU operators ("cpu_op"). Times are in ms per step."""
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    kernels = [e for e in complete if e.get("cat") == "kernel"]
    device = [e for e in complete if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    calls = [e["name"] for e in complete if e.get("cat") in ("cuda_runtime", "cuda_driver")]
    marks = [e for e in complete if e.get("name") == STEP_MARK]
    if kernels:
        timed = [(e["name"], float(e["dur"])) for e in device]
        source = "kernels and device copies"
    else:
        ops = [e for e in complete if e.get("cat") == "cpu_op"]
        timed = list(zip((e["name"] for e in ops), self_times(ops), strict=True))
        source = "CPU operators (self time)"
    by_cat: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])  # µs, count
    by_name: dict[str, float] = defaultdict(float)
    for name, us in timed:
        entry = by_cat[category(name)]
        entry[0] += us
        entry[1] += 1
        by_name[name] += us
    busy, idle, gaps = busy_and_gaps([(e["ts"], e["ts"] + e["dur"]) for e in device])
    per = 1.0 / steps
    return {
        "source": source,
        "categories": {cat: (us * per / 1e3, n * per) for cat, (us, n) in by_cat.items()},
        "total_ms": sum(us for _, us in timed) * per / 1e3,
        "top": sorted(((us * per / 1e3, name) for name, us in by_name.items()), reverse=True),
        "host_ms": sum(e["dur"] for e in marks) / max(len(marks), 1) / 1e3,
        "device_busy_ms": busy * per / 1e3, "device_idle_ms": idle * per / 1e3,
        "gaps": gaps * per,
        "launches": sum(c in LAUNCH_CALLS for c in calls) * per,
        "graph_launches": sum(c in GRAPH_CALLS for c in calls) * per,
        "syncs": {c: n * per for c in SYNC_CALLS if (n := calls.count(c))},
        "kernels": len(kernels) * per,
    }


def profile_steps(cfg: TrainConfig, device: torch.device, steps: int, warmup: int,
                  trace_path: Path) -> tuple[dict[str, Any], float]:
    """Profile `steps` steps of the device path after `warmup` untimed ones (compilation, CUDA
    graphs' recording), write the Chrome trace to `trace_path`; return its summary and the
    unprofiled step time in ms (the mean of `steps` steps timed just before)."""
    torch._dynamo.reset()
    images = random_images(cfg.batch_size * 4, cfg.image_size)  # (N, 3, H, W)
    crops = endless(DeviceBatches(images, cfg.batch_size, crop_config(cfg), 0, device))
    parts = build_parts(cfg, steps_per_epoch=warmup + 2 * steps, device=device)
    for i in range(warmup):
        train_step(parts, next(crops), i)
    _wait(device)
    start = time.perf_counter()
    for i in range(steps):
        out = train_step(parts, next(crops), warmup + i)
    float(out["loss"])  # waits for the device
    step_ms = (time.perf_counter() - start) / steps * 1e3
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    with profile(activities=activities) as prof:
        for i in range(steps):
            with record_function(STEP_MARK):
                train_step(parts, next(crops), warmup + steps + i)
        _wait(device)
    trace_path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(trace_path))  # gzipped when the name ends in .gz
    opener = gzip.open if trace_path.suffix == ".gz" else open
    with opener(trace_path, "rt") as f:
        events = json.load(f)["traceEvents"]
    return summarize(events, steps), step_ms


def _wait(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_summary(title: str, s: dict[str, Any], step_ms: float, batch: int, top: int = 12
                   ) -> str:
    """The summary of one mode as a few lines and two markdown tables."""
    lines = [title,
             f"- step without the profiler: {step_ms:.2f} ms ({batch / step_ms * 1e3:,.0f} "
             f"images/s); the host issues a step in {s['host_ms']:.2f} ms"]
    if s["kernels"]:
        lines += [f"- device busy {s['device_busy_ms']:.2f} ms per step, idle "
                  f"{s['device_idle_ms']:.2f} ms in {s['gaps']:.0f} gaps longer than "
                  f"{GAP_US:g} µs; {s['kernels']:.0f} kernels per step",
                  f"- launches per step: {s['launches']:.0f} kernel launches, "
                  f"{s['graph_launches']:.0f} CUDA-graph launches; host waits per step: "
                  + (", ".join(f"{k} x{v:g}" for k, v in s["syncs"].items()) or "none")]
    lines += ["", f"| {s['source']}: category | ms per step | share | calls per step |",
              "| --- | ---: | ---: | ---: |"]
    total = max(s["total_ms"], 1e-12)
    for cat, (ms, n) in sorted(s["categories"].items(), key=lambda kv: -kv[1][0]):
        lines.append(f"| {cat} | {ms:.3f} | {100 * ms / total:.1f}% | {n:.0f} |")
    lines += [f"| total | {s['total_ms']:.3f} | 100% | |", "",
              "| slowest | ms per step | category |", "| --- | ---: | --- |"]
    for ms, name in s["top"][:top]:
        short = name if len(name) <= 90 else name[:87] + "..."
        lines.append(f"| `{short}` | {ms:.3f} | {category(name)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.profile_step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--preset", default=None,
                        help="default: cifar10 on CUDA; elsewhere cpu-demo, shrunk (fast mode)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 1024 on CUDA; 32")
    parser.add_argument("--modes", default="eager,reduce-overhead",
                        help="comma-separated: eager, or a torch.compile mode "
                             f"({', '.join(COMPILE_MODES)})")
    parser.add_argument("--steps", type=int, default=None, help="profiled steps (10; 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (10; 2)")
    parser.add_argument("--trace-dir", default="runs/profile",
                        help="where the Chrome traces are written, one per mode")
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    for mode in modes:
        if mode != "eager" and mode not in COMPILE_MODES:
            parser.error(f"--modes: {mode!r} is not allowed; use eager or one of "
                         f"{', '.join(COMPILE_MODES)}")
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    base = get_preset(args.preset or "cifar10") if gpu else \
        (get_preset(args.preset) if args.preset else fast_config(get_preset("cpu-demo")))
    cfg = replace(base, batch_size=args.batch_size or (1024 if gpu else 32), epochs=1,
                  warmup_epochs=0, freeze_last_layer=0, device=device.type, n_train=None)
    steps, warmup = args.steps or (10 if gpu else 2), args.warmup or (10 if gpu else 2)
    name = torch.cuda.get_device_name(device) if gpu else platform.machine()
    print(f"torch {torch.__version__}, device {device} ({name}), {time.strftime('%Y-%m-%d')}; "
          f"{cfg.arch}/{cfg.patch_size}, 2 x {cfg.global_size} + {cfg.n_local_crops} x "
          f"{cfg.local_size} px, K={cfg.out_dim}, batch {cfg.batch_size}; {steps} profiled "
          f"steps after {warmup}", flush=True)
    for mode in modes:
        run = cfg if mode == "eager" else replace(cfg, compile=True, compile_mode=mode)
        trace = Path(args.trace_dir) / f"step-{mode}-b{cfg.batch_size}.json.gz"
        summary, step_ms = profile_steps(run, device, steps, warmup, trace)
        how = "eager" if mode == "eager" else f"torch.compile, mode {mode}"
        title = f"\n{how} (trace: {trace})"
        print(format_summary(title, summary, step_ms, cfg.batch_size), flush=True)


if __name__ == "__main__":
    main()
