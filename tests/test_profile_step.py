"""tools/profile_step.py: the summaries of a profiler trace, on constructed traces with known
answers, and one real profile of a training step on the CPU."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace

import pytest
import torch

from minidino.config import fast_config
from minidino.presets import get_preset
from tools.profile_step import (
    STEP_MARK,
    busy_and_gaps,
    category,
    main,
    profile_steps,
    self_times,
    summarize,
)

# Kernel and operator names as CUDA and CPU traces of a ViT step show them.
NAMES = {
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_"
    "segment_k_off_kernel__5x_cublas": "matmul",
    "nvjet_tst_128x64_64x8_1x2_h_bz_coopA_NNT": "matmul",
    "triton_tem_fused_addmm_12": "matmul",
    "aten::addmm": "matmul",
    "aten::mkldnn_convolution": "matmul",
    "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4, false, "
    "false, cutlass::bfloat16_t>, false, false, false, false, true, true, false, false>":
    "attention",  # cutlass, but attention
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
    "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float, "
    "false>(int, float, float const*, float const*, float const*, float*, float*, float*)":
    "normalisation",
    "triton_red_fused_native_layer_norm_3": "normalisation",
    "void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, "
    "at::native::(anonymous namespace)::SoftMaxForwardEpilogue>": "softmax and loss",
    "triton_per_fused__softmax_7": "softmax and loss",
    "void at::native::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
    "FusedOptimizerTensorListMetadata<4>, at::native::(anonymous namespace)::"
    "FusedAdamMathFunctor<float, 4, (at::native::ADAM_MODE)1, false>, float*>": "optimizer and EMA",
    "aten::_foreach_lerp_": "optimizer and EMA",
    "void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl"
    "(at::TensorIteratorBase&, at::native::GeluType)::{lambda()#2}::operator()() const::"
    "{lambda()#2}::operator()() const::{lambda(float)#1}, std::array<char*, 2ul> >": "elementwise",
    "aten::add_": "elementwise",
    "triton_poi_fused__to_copy_add_gelu_5": "fused by torch.compile",
    "## Call CompiledFxGraph fibbcp53vbp5whvigls6lsl54iuswb4oyge74pbtf2gl72zvn5ap ##":
    "fused by torch.compile",
    "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps"
    "<float, float, float, float>, unsigned int, float, 4, 4> >": "reductions",
    "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda"
    "(at::TensorIteratorBase&)::{lambda()#3}::operator()() const>": "copies",
    "Memcpy HtoD (Pinned -> Device)": "copies",
    "aten::cat": "copies",
    "void at::native::(anonymous namespace)::distribution_elementwise_grid_stride_kernel"
    "<float, 4, at::native::templates::cuda::uniform_and_transform>": "random numbers",
    "aten::empty": "other",
}


@pytest.mark.parametrize("name", NAMES)
def test_category_of_real_kernel_and_operator_names(name: str) -> None:
    assert category(name) == NAMES[name]


def _op(name: str, ts: float, dur: float, tid: int = 1, cat: str = "cpu_op") -> dict:
    return {"ph": "X", "cat": cat, "name": name, "pid": 7, "tid": tid, "ts": ts, "dur": dur}


def test_self_times_subtract_only_the_directly_nested_operators() -> None:
    ops = [_op("aten::linear", 0, 100), _op("aten::addmm", 10, 30), _op("aten::copy_", 15, 10),
           _op("aten::gelu", 50, 10), _op("aten::mm", 5, 25, tid=2)]
    # linear: 100 - 30 (addmm) - 10 (gelu); addmm: 30 - 10 (copy_); the other thread is alone
    assert self_times(ops) == [60.0, 20.0, 10.0, 10.0, 25.0]


def test_self_times_of_back_to_back_operators_are_their_durations() -> None:
    ops = [_op("a", 0, 10), _op("b", 10, 5), _op("c", 15, 1)]  # b starts where a ends
    assert self_times(ops) == [10.0, 5.0, 1.0]


def test_busy_idle_and_gaps_of_overlapping_intervals() -> None:
    intervals = [(40, 45), (0, 10), (5, 20), (45.5, 50), (100, 101)]
    busy, idle, gaps = busy_and_gaps(intervals, gap_us=10)
    assert busy == pytest.approx(20 + 5 + 4.5 + 1)  # the union: 0-20, 40-45, 45.5-50, 100-101
    assert idle == pytest.approx(20 + 0.5 + 50)
    assert gaps == 2  # 20-40 and 50-100; 45-45.5 is too short
    assert busy_and_gaps([]) == (0.0, 0.0, 0)


def _gpu_trace() -> list[dict]:
    """Two steps; each: a mark on the host, 3 launches, one graph launch, one sync; on the device
    a GEMM (10 µs), a layer norm (4 µs), a copy (2 µs), 20 µs apart from the next step."""
    events: list[dict] = [{"ph": "M", "name": "process_name", "pid": 0, "args": {}}]
    for step, t in enumerate((0.0, 100.0)):
        events.append(_op(STEP_MARK, t, 30, cat="user_annotation"))
        events += [_op(call, t + 1 + i, 1, cat="cuda_runtime") for i, call in
                   enumerate(("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernel",
                              "cudaGraphLaunch", "cudaStreamSynchronize"))]
        events.append(_op("aten::addmm", t, 5))
        events += [_op("sm90_xmma_gemm_bf16bf16", t + 40, 10, tid=9, cat="kernel"),
                   _op("vectorized_layer_norm_kernel", t + 50, 4, tid=9, cat="kernel"),
                   _op("Memcpy DtoH (Device -> Pinned)", t + 54 + step, 2, tid=9,
                       cat="gpu_memcpy")]
    return events


def test_summary_of_a_gpu_trace_counts_per_step() -> None:
    s = summarize(_gpu_trace(), steps=2)
    assert s["source"] == "kernels and device copies"
    assert s["categories"] == {"matmul": (0.010, 1.0), "normalisation": (0.004, 1.0),
                               "copies": (0.002, 1.0)}
    assert s["total_ms"] == pytest.approx(0.016)
    assert s["kernels"] == 2  # 4 kernel events (the copy is not one) over 2 steps
    assert (s["launches"], s["graph_launches"]) == (3, 1)
    assert s["syncs"] == {"cudaStreamSynchronize": 1}
    assert s["host_ms"] == pytest.approx(0.030)
    # device: step 0 busy 40-56 (16 µs); step 1 busy 140-154, then 155-157 (1 µs apart)
    assert s["device_busy_ms"] == pytest.approx((16 + 14 + 2) / 2 / 1e3)
    assert s["device_idle_ms"] == pytest.approx((84 + 1) / 2 / 1e3)
    assert s["gaps"] == 0.5  # one gap over 10 µs (56-140) in two steps
    assert s["top"][0] == (pytest.approx(0.010), "sm90_xmma_gemm_bf16bf16")


def test_summary_of_a_cpu_trace_sums_self_times() -> None:
    events = [_op("aten::linear", 0, 100), _op("aten::addmm", 10, 70), _op("aten::gelu", 85, 10)]
    s = summarize(events, steps=1)
    assert s["source"] == "CPU operators (self time)"
    assert s["categories"] == {"other": (0.020, 1.0), "matmul": (0.070, 1.0),
                               "elementwise": (0.010, 1.0)}
    assert s["total_ms"] == pytest.approx(0.100)  # the outer operator's duration: nothing twice
    assert s["kernels"] == 0 and s["launches"] == 0 and s["syncs"] == {}


def test_profile_of_a_real_step_on_the_cpu(tmp_path) -> None:
    torch.manual_seed(0)
    cfg = replace(fast_config(get_preset("cpu-demo")), batch_size=8, epochs=1, warmup_epochs=0,
                  freeze_last_layer=0, n_train=None)
    trace = tmp_path / "step.json.gz"
    s, step_ms = profile_steps(cfg, torch.device("cpu"), steps=1, warmup=1, trace_path=trace)
    with gzip.open(trace, "rt") as f:
        events = json.load(f)["traceEvents"]
    marks = [e for e in events if e.get("name") == STEP_MARK]
    assert len(marks) == 1 and step_ms > 0
    ops = sorted((e for e in events if e.get("cat") == "cpu_op" and e.get("ph") == "X"),
                 key=lambda e: (e["tid"], e["ts"], -e["dur"]))
    outermost, end = 0.0, {}  # the operators not inside another one, and where the last ends
    for e in ops:
        if e["ts"] >= end.get(e["tid"], -1.0):
            outermost += e["dur"]
            end[e["tid"]] = e["ts"] + e["dur"]
    # the self times add up to the time spent in the outermost operators, counted once
    assert s["total_ms"] == pytest.approx(outermost / 1e3, rel=1e-6)
    cats = s["categories"]
    for kind in ("matmul", "attention", "optimizer and EMA", "normalisation", "softmax and loss"):
        assert cats[kind][0] > 0, kind  # a ViT step with AdamW, the EMA and the DINO loss


def test_a_mode_that_does_not_exist_is_refused(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--modes", "eager,fastest"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--modes" in err and "'fastest'" in err and "reduce-overhead" in err
