"""One self-attention call of InfiniteTalk's DiT at its real shape, through each kernel that can run here.

    python3 benchmarks/attention_bench.py --out $OUT/attention.json      # on the GPU machine, torch only
    # candidates that travel as wheels (.whl, carried): nvidia-cudnn-frontend from PyPI; SageAttention 2.2.0,
    # built by benchmarks/device/build_sageattention.sh

The shape: 832x480, 81 frames -> 21 latent frames x 30 x 52 patches = 32,760 tokens, 40 heads of 128, batch 1,
bf16, laid out as the wrapper calls sdpa: q, k, v made [B, L, H, D] and passed as q.transpose(1, 2).
Per kernel: the median of --reps timed calls (CUDA events) after warm-up, TFLOP/s (4 B H L^2 D), the CUDA kernels
it launched (names, from torch.profiler: which backend sdpa really picked), and its error against an fp32
reference on a slice (2 heads x 2,048 queries against all 32,760 keys): ||out - ref|| / ||ref||.
fp8 kernels are timed on q, k, v quantized beforehand (per-tensor scale from the amax); cuDNN's also as the model
calls it (comfy_nodes/fp8_attention.py, whose quantization and graph these cases use), quantization included.

    python3 benchmarks/attention_bench.py --centring --out $OUT/centring.json

only the centring of k and v before quantizing (fp8_attention.smooth()): the model's call with and without it
(its cost), and its error on keys or values that carry a constant offset in a few channels (what it is for).
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

B, L, H, D = 1, 32760, 40, 128
FLOP = 4 * B * H * L * L * D
REF_HEADS, REF_QUERIES = 2, 2048


def timed(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2] / 1000


def kernels_of(fn) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names: dict[str, float] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            names[e.name] = names.get(e.name, 0.0) + e.device_time_total
    return [f"{n[:140]} ({t / 1000:.2f} ms)" for n, t in sorted(names.items(), key=lambda kv: -kv[1])[:4]]


def reference(q, k, v) -> torch.Tensor:
    """fp32 attention of the first REF_HEADS heads and REF_QUERIES queries, [B, Lq, h, D]."""
    qs = q[:, :REF_QUERIES, :REF_HEADS].float().transpose(1, 2)
    ks = k[:, :, :REF_HEADS].float().transpose(1, 2)
    vs = v[:, :, :REF_HEADS].float().transpose(1, 2)
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(qs, ks, vs).transpose(1, 2)


def rel_err(out_blhd: torch.Tensor, ref: torch.Tensor) -> float:
    o = out_blhd[:, :REF_QUERIES, :REF_HEADS].float()
    return float((o - ref).norm() / ref.norm())


def _load_fp8_attention():
    """comfy_nodes/fp8_attention.py (attention_mode "cudnn_fp8"), loaded by its path: its per-tensor quantization
    and its cuDNN fp8 graph are what the fp8 cases below time."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "comfy_nodes" / "fp8_attention.py"
    spec = importlib.util.spec_from_file_location("fp8_attention", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fp8_attention = _load_fp8_attention()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--only-fp8", action="store_true", help="only the fp8 candidates (and the default sdpa)")
    parser.add_argument("--centring", action="store_true", help="only the centring study (see the module's doc)")
    args = parser.parse_args()
    torch.manual_seed(0)
    dev = "cuda"
    q = torch.randn(B, L, H, D, device=dev, dtype=torch.bfloat16)
    k = torch.randn(B, L, H, D, device=dev, dtype=torch.bfloat16)
    v = torch.randn(B, L, H, D, device=dev, dtype=torch.bfloat16)
    ref = reference(q, k, v)
    results = {"shape": {"B": B, "L": L, "H": H, "D": D}, "torch": torch.__version__,
               "cudnn": torch.backends.cudnn.version(), "device": torch.cuda.get_device_name(), "kernels": []}

    def record(name: str, fn, out_fn=None, note: str = "") -> None:
        entry: dict = {"name": name, "note": note}
        try:
            out = (out_fn or fn)()
            entry["rel_err"] = round(rel_err(out, ref), 5)
            entry["s"] = round(timed(fn, args.reps), 5)
            entry["tflops"] = round(FLOP / entry["s"] / 1e12, 1)
            entry["cuda_kernels"] = kernels_of(fn)
        except Exception as exc:
            entry["failed"] = f"{type(exc).__name__}: {exc}"[:1500]
            entry["trace"] = traceback.format_exc()[-1500:]
        print(json.dumps({k2: v2 for k2, v2 in entry.items() if k2 != "trace"}), flush=True)
        results["kernels"].append(entry)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)

    def wrapper_sdpa():  # exactly as the wrapper's attention(..., attention_mode="sdpa")
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    record("sdpa, wrapper layout, default dispatch", wrapper_sdpa)
    if args.centring:
        centring(record, q, k, v, results)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
        return
    forced = (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION)
    for backend in () if args.only_fp8 else forced:
        def forced(backend=backend):
            with sdpa_kernel(backend):
                return wrapper_sdpa()
        record(f"sdpa forced {backend.name}", forced)

    qc, kc, vc = (t.transpose(1, 2).contiguous() for t in (q, k, v))  # [B, H, L, D] contiguous

    def bhld_sdpa():
        return F.scaled_dot_product_attention(qc, kc, vc).transpose(1, 2)
    if not args.only_fp8:
        record("sdpa, [B,H,L,D] contiguous, default dispatch", bhld_sdpa)

    try:  # as the wrapper's attention_mode "sageattn" calls it: 1.0.6 (Triton, int8 QK, fp16 PV) from PyPI, or
        # 2.2.0 (benchmarks/device/build_sageattention.sh), which on Hopper runs its sm90 CUDA kernel (int8 QK,
        # fp8 PV accumulated in fp32)
        from importlib.metadata import version

        from sageattention import sageattn

        results["sageattention"] = version("sageattention")
        record(f"sageattn (SageAttention {results['sageattention']}, the wrapper's call)",
               lambda: sageattn(q, k, v, tensor_layout="NHD"))
    except ImportError as exc:
        results["sageattention"] = f"not importable: {exc}"
    sage_kernels(record, q, k, v)

    # PyTorch's own fp8 attention (torch >= 2.11, experimental): FA3 (per-head descale) or cuDNN (per-tensor).
    # Its FA3 path asks for torch.nn.attention.activate_flash_attention_impl("FA3") first (which needs FA3's
    # kernels in the build); the activation's outcome is recorded, and bf16 sdpa is timed again under FA3.
    try:
        activate = getattr(torch.nn.attention, "activate_flash_attention_impl", None)
        if activate is not None:
            activate("FA3")
            results["fa3_activated"] = True
            record("sdpa, wrapper layout, FA3 activated", wrapper_sdpa)
    except Exception as exc:
        results["fa3_activated"] = f"{type(exc).__name__}: {exc}"[:500]
        print("FA3:", results["fa3_activated"], flush=True)
    try:
        from torch.nn.attention.experimental import _scaled_dot_product_attention_quantized as sdpq

        results["torch_fp8_descale_types"] = [t.name for t in sdpq.DescaleType]
        (q8, dq), (k8, dk), (v8, dv) = (fp8_attention.quantize(t) for t in (qc, kc, vc))
        for type_name in results["torch_fp8_descale_types"]:
            dtype_ = sdpq.DescaleType[type_name]
            shape = (B, H) if type_name == "PER_HEAD" else (1, 1, 1, 1)
            descales = [d.reshape(1).expand(shape).contiguous() if type_name == "PER_HEAD" else d.reshape(shape)
                        for d in (dq, dk, dv)]

            def fp8_call(dtype_=dtype_, descales=descales):
                with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
                    return sdpq._scaled_dot_product_attention_quantized(
                        q8, k8, v8, q_descale=descales[0], k_descale=descales[1], v_descale=descales[2],
                        q_descale_type=dtype_, k_descale_type=dtype_, v_descale_type=dtype_).transpose(1, 2)
            record(f"torch fp8 sdpa quantized ({type_name})", fp8_call)
    except Exception as exc:
        results["torch_fp8"] = f"{type(exc).__name__}: {exc}"[:1500]
        print("torch fp8:", results["torch_fp8"], flush=True)

    cudnn_fp8(record, q, k, v, results)
    model_fp8(record, q, k, v, results)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    for e in results["kernels"]:
        print(f"{e['name']:55s} {e.get('s', '-')!s:>9} s {e.get('tflops', '-')!s:>7} TFLOP/s "
              f"err {e.get('rel_err', '-')}"
              f" {e.get('failed', '')[:120]}")


def fp8_op_ready(results: dict) -> bool:
    """Registers fp8_attention's cuDNN op where it can run here; else records and prints why not (False)."""
    results["fp8_attention_problem"] = fp8_attention.problem_here()
    if results["fp8_attention_problem"]:
        print("fp8_attention:", results["fp8_attention_problem"], flush=True)
        return False
    fp8_attention.register_op()
    return True


def model_fp8(record, q, k, v, results: dict) -> None:
    """attention_mode "cudnn_fp8" as the model runs it (comfy_nodes/fp8_attention.py: per-tensor quantization,
    the cuDNN fp8 custom op, dequantization), eager and under torch.compile (which fuses the quantization)."""
    fp8 = fp8_attention
    if not fp8_op_ready(results):
        return
    record("attention_mode cudnn_fp8 (comfy_nodes/fp8_attention.self_attention), eager",
           lambda: fp8.self_attention(q, k, v))
    compiled = torch.compile(fp8.self_attention)
    record("attention_mode cudnn_fp8, torch.compile", lambda: compiled(q, k, v))


def centring(record, q, k, v, results: dict) -> None:
    """The model's fp8 call with and without the centring (eager and compiled: its cost), then its errors, as
    tests/test_fp8_attention.py measures them on the CPU, at the real shape: keys with 40 added to 1 channel in 16
    (as real models' keys have), then values with 2 added to the same channels, each error relative to the part of
    the output that varies from token to token (over every channel for the keys, the offset ones for the values),
    for the centred call, the uncentred one and bf16 sdpa. q is doubled for these: with random q and k over 32,760
    keys, attention is so flat that the varying part is ~0.01, under bf16's own rounding of an offset of 2; doubled,
    each query weighs ~600 keys (L e^-4) and the errors of the methods, not the rounding, tell them apart."""
    fp8 = fp8_attention
    if not fp8_op_ready(results):
        return

    def uncentred(q, k, v):
        return fp8.self_attention(q, k, v, centre=False)

    calls = {"centred": fp8.self_attention, "uncentred": uncentred}
    for name, fn in calls.items():
        record(f"cudnn_fp8 {name}, eager", lambda fn=fn: fn(q, k, v))
        compiled = torch.compile(fn)
        record(f"cudnn_fp8 {name}, torch.compile", lambda compiled=compiled: compiled(q, k, v))
    calls["sdpa bf16"] = lambda q, k, v: F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    q = (q.float() * 2).bfloat16()
    channels = torch.zeros(1, 1, H, D, device=q.device)
    channels[..., ::16] = 1.0
    errors = {}
    for name, k2, v2, where in (("keys +40", (k.float() + 40 * channels).bfloat16(), v, torch.ones_like(channels)),
                                ("values +2", k, (v.float() + 2 * channels).bfloat16(), channels)):
        ref2 = reference(q, k2, v2)
        sel = (where[:, :, :REF_HEADS] == 1).expand_as(ref2)
        varying = (ref2 - ref2.mean(dim=1, keepdim=True))[sel].norm()
        errors[name] = {call: round(float((fn(q, k2, v2)[:, :REF_QUERIES, :REF_HEADS].float() - ref2)[sel].norm()
                                          / varying), 5) for call, fn in calls.items()}
    results["offset_errors"] = errors
    print(json.dumps(errors), flush=True)


def sage_kernels(record, q, k, v) -> None:
    """SageAttention 2's kernels one by one, each called directly (the wrapper's sageattn() picks the first on
    Hopper). The sm89 module's kernels (mma.sync, fp8 PV) and the sm80 one (fp16 PV) are built for sm_90a too by
    build_sageattention.sh, so they run on an H200."""
    try:
        import sageattention as sa
    except ImportError:
        return
    nhd = {"tensor_layout": "NHD"}
    calls = [
        ("sm90 kernel (wgmma, TMA), int8 QK, fp8 PV, fp32+fp32", "sageattn_qk_int8_pv_fp8_cuda_sm90",
         {"pv_accum_dtype": "fp32+fp32"}),
        ("sm89 kernel (mma), int8 QK, fp8 PV, fp32+fp32", "sageattn_qk_int8_pv_fp8_cuda", {"pv_accum_dtype": "fp32+fp32"}),
        ("sm89 kernel (mma), int8 QK, fp8 PV, fp32+fp16", "sageattn_qk_int8_pv_fp8_cuda", {"pv_accum_dtype": "fp32+fp16"}),
        ("sm80 kernel (mma), int8 QK, fp16 PV, fp32", "sageattn_qk_int8_pv_fp16_cuda", {"pv_accum_dtype": "fp32"}),
        ("triton, int8 QK, fp16 PV", "sageattn_qk_int8_pv_fp16_triton", {}),
    ]
    for name, function, kwargs in calls:
        fn = getattr(sa, function, None)
        if fn is not None:
            record(f"SageAttention {name}", lambda fn=fn, kwargs=kwargs: fn(q, k, v, **nhd, **kwargs))


def cudnn_fp8(record, q, k, v, results: dict) -> None:
    """cuDNN's fp8 forward SDPA alone, through comfy_nodes/fp8_attention.py's graph (nvidia-cudnn-frontend, if
    carried) on q, k, v quantized beforehand: fp8 e4m3 in the wrapper's [B, L, H, D] memory, per-tensor descales,
    P quantized with scale 448; each output type cuDNN may build (Hopper declines a bf16 one), turned to bf16.
    The quantization's cost is in model_fp8's cases."""
    try:
        import cudnn
    except Exception as exc:
        results["cudnn_frontend"] = f"not importable: {type(exc).__name__}: {exc}"[:1500]
        print("cudnn frontend:", results["cudnn_frontend"], flush=True)
        return
    results["cudnn_frontend"] = {"version": getattr(cudnn, "__version__", "?"),
                                 "backend": cudnn.backend_version()}
    try:
        (q8, dq), (k8, dk), (v8, dv) = (fp8_attention.quantize(t) for t in (q, k, v))
        handle = cudnn.create_handle()
        errors = {}
        for out_type, out_dtype in (("BFLOAT16", torch.bfloat16), ("FP8_E4M3", torch.float8_e4m3fn)):
            try:
                built = fp8_attention.build_graph(cudnn, handle, q8, k8, v8, out_type)
            except Exception as exc:  # cuDNN declines some output types on some GPUs
                errors[out_type] = f"{type(exc).__name__}: {exc}"[:1500]
                print(f"cudnn fp8, {out_type} output:", errors[out_type][:400], flush=True)
                continue
            out = torch.empty_like(q8, dtype=out_dtype)

            def run(built=built, out=out):
                fp8_attention.run_graph(built, q8, k8, v8, dq, dk, dv, out)
                return out.to(torch.bfloat16) * (dv * fp8_attention.O_HEADROOM).to(torch.bfloat16)

            record(f"cuDNN fp8 sdpa (cudnn-frontend graph), {out_type} output, turned to bf16", run)
        results["cudnn_fp8_declined"] = errors
    except Exception as exc:
        results["cudnn_fp8_error"] = f"{type(exc).__name__}: {exc}"[:2000]
        results["cudnn_fp8_trace"] = traceback.format_exc()[-2000:]
        print("cudnn fp8:", results["cudnn_fp8_error"], flush=True)

if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"total {time.monotonic() - started:.1f} s")
