"""attention_mode "cudnn_fp8" for ComfyUI-WanVideoWrapper: the DiT's self-attention through cuDNN's fp8 SDPA, every
other attention (text, image and audio cross-attention, short sequences) as "sdpa".

The InfiniteTalk templates' >= 38 GiB row sets it (template_params {"attention_mode": "sdpa"} turns it off). The
kernel needs nvidia-cudnn-frontend (requirements/comfyui.lock) and a Hopper GPU (compute capability 9.0): cuDNN 9.x
runs an fp8 forward SDPA there only with an fp8 output (a bf16 output is Blackwell-only). Where either is missing
the mode runs sdpa; the log says so when the patch is installed (wan_patches.add_modes). A shape cuDNN declines
runs sdpa too (said once for each shape).
Everything on the path a model call takes (route's attention, fits, self_attention) is traceable by torch.compile:
no logging, no imports, no registration there.

One call, for q, k, v of [batch, tokens, heads, head_dim] in bf16 (the wrapper's layout):
  - k and v are centred over the tokens (smooth(): exact for attention, SageAttention's "smoothing" of K, and of V
    here too), so that a channel's constant offset does not set the scale;
  - each of q, k, v is scaled by its own amax to e4m3 (per-tensor scale, descale = amax / 448);
  - cuDNN computes softmax(q k^T / sqrt(d)) v with the descales, P quantized to e4m3 with scale 448, sums in fp32;
  - O is written in e4m3 scaled by 1 / (2 descale_v) (|O| <= max |v|, so it fits with room to spare: the fp8 P's
    rows may sum to a little over 1), turned back to bf16, and v's mean added back.
The quantization and the dequantization are plain torch ops (torch.compile fuses them into the block); the cuDNN
call is a custom op, opaque to torch.compile, whose graph is built once per shape and device and cached.

Measured on an H200 at the real shape (32,760 tokens, 40 heads x 128; benchmarks/attention_bench.py,
docs/PERFORMANCE.md): the fp8 kernel 25-26 ms against cuDNN's bf16 kernel's 33-34 ms, 29.9 ms a call with the
quantization against 38.3 ms; relative error 0.060 against fp32 (bf16: 0.0023), most of it from the fp8 O. In the
model (random weights at the real shapes): 2.02 s a DiT step against 2.49, the output 10.8 units (8-bit) from the
bf16-attention run, no flat or frozen frame. Those runs came before the centring (smooth()), which has not run on a
GPU yet. Whether the error shows in a real video needs the real weights.
"""

from __future__ import annotations

import logging
import math
import sys
import threading

try:
    import torch
except ImportError:  # the unit tests load this module without torch
    torch = None

log = logging.getLogger("runpod_worker.fp8_attention")

MODE = "cudnn_fp8"
FP8_MAX = 448.0  # the largest e4m3 value
O_HEADROOM = 2.0  # O is written at half the range its bound allows: fp8 P's rows may sum to a little over 1
MIN_SELF_TOKENS = 4096  # shorter self-attention (and any cross-attention) runs sdpa: fp8 gains nothing there
HEAD_DIMS = (64, 128)  # what cuDNN's fp8 SDPA takes on Hopper


def support_problem(capability, cudnn_importable: bool) -> str | None:
    """Why the fp8 kernel cannot run here (None: it can), from the GPU's (major, minor) or None and the import."""
    if capability is None:
        return "no CUDA GPU"
    if tuple(capability) != (9, 0):
        return f"cuDNN's fp8 SDPA with an fp8 output runs on Hopper (9.0); this GPU is {capability[0]}.{capability[1]}"
    if not cudnn_importable:
        return "nvidia-cudnn-frontend is not installed (requirements/comfyui.lock pins it)"
    return None


def fits(q, k, v, dtypes, attn_mask=None, causal=False, dropout_p=0.0) -> bool:
    """Whether this call is one the fp8 kernel takes: long self-attention, no mask, [B, L, H, D] of one of
    `dtypes` on a GPU."""
    return (attn_mask is None and not causal and not dropout_p and q.dim() == 4 and q.shape == k.shape == v.shape
            and q.shape[1] >= MIN_SELF_TOKENS and q.shape[-1] in HEAD_DIMS and q.is_cuda and q.dtype in dtypes
            and k.dtype == q.dtype and v.dtype == q.dtype)


def route(original, fp8_self_attention, dtypes):
    """The wrapper's attention() with MODE added: MODE's calls that fit go to fp8_self_attention(q, k, v) (None:
    the kernel cannot run here), its other calls to original(..., attention_mode="sdpa"), every other mode to
    original unchanged."""

    def attention(q, k, v, *args, attention_mode="sdpa", **kwargs):
        if attention_mode != MODE:
            return original(q, k, v, *args, attention_mode=attention_mode, **kwargs)
        if fp8_self_attention is not None and not args and fits(
                q, k, v, dtypes, kwargs.get("attn_mask"), kwargs.get("causal", False), kwargs.get("dropout_p", 0.0)):
            return fp8_self_attention(q, k, v)
        return original(q, k, v, *args, attention_mode="sdpa", **kwargs)

    attention.__wrapped__ = original
    attention.__name__ = getattr(original, "__name__", "attention")
    return attention


def add_choice(loader) -> None:
    """WanVideoModelLoader's attention_mode list gets MODE (ComfyUI checks a prompt's values against it)."""
    original = loader.INPUT_TYPES

    def input_types(cls):
        types = original()
        spec = types.get("optional", {}).get("attention_mode")
        if spec and MODE not in spec[0]:
            types["optional"]["attention_mode"] = (list(spec[0]) + [MODE], *spec[1:])
        return types

    input_types.__wrapped__ = original
    loader.INPUT_TYPES = classmethod(input_types)


def rebind(original, replacement, modules=None) -> list[str]:
    """Every loaded module whose name `attention` is `original` (the wrapper's model.py and multitalk.py import it
    by name) gets `replacement` instead; returns those modules' names."""
    names = []
    for name, module in list((modules if modules is not None else sys.modules).items()):
        if module is not None and vars(module).get("attention") is original:  # no module __getattr__ hooks
            module.attention = replacement
            names.append(name)
    return names


# ---- the kernel (torch and nvidia-cudnn-frontend, imported only when it runs) ----

def build_graph(cudnn, handle, q8, k8, v8, out_type: str = "FP8_E4M3") -> dict:
    """cuDNN's fp8 SDPA graph for e4m3 q8, k8, v8 in [B, L, H, D] memory, O of cuDNN data type `out_type` laid out
    like q8 (Hopper builds only FP8_E4M3); raises where cuDNN declines it. run_graph() executes it."""
    def dims_strides(t):  # [B, L, H, D] memory seen as cuDNN's [B, H, L, D]
        b, seq, h, d = t.shape
        return [b, h, seq, d], [t.stride(0), t.stride(2), t.stride(1), t.stride(3)]

    graph = cudnn.pygraph(io_data_type=cudnn.data_type.FP8_E4M3, intermediate_data_type=cudnn.data_type.FLOAT,
                          compute_data_type=cudnn.data_type.FLOAT, handle=handle)
    fp8 = {}
    for name, t in (("q", q8), ("k", k8), ("v", v8)):
        dims, strides = dims_strides(t)
        fp8[name] = graph.tensor(name=name, dim=dims, stride=strides, data_type=cudnn.data_type.FP8_E4M3)
    scalar = {name: graph.tensor(name=name, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=cudnn.data_type.FLOAT)
              for name in ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")}
    o, _stats, amax_s, amax_o = graph.sdpa_fp8(
        q=fp8["q"], k=fp8["k"], v=fp8["v"], descale_q=scalar["descale_q"], descale_k=scalar["descale_k"],
        descale_v=scalar["descale_v"], descale_s=scalar["descale_s"], scale_s=scalar["scale_s"],
        scale_o=scalar["scale_o"], is_inference=True, attn_scale=1.0 / math.sqrt(q8.shape[-1]), use_causal_mask=False)
    o_dims, o_strides = dims_strides(q8)
    o.set_output(True).set_dim(o_dims).set_stride(o_strides).set_data_type(getattr(cudnn.data_type, out_type))
    for amax in (amax_s, amax_o):
        amax.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(cudnn.data_type.FLOAT)
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    device = q8.device
    one = lambda x: torch.full((1, 1, 1, 1), x, device=device, dtype=torch.float32)  # noqa: E731
    return {"cudnn": cudnn, "handle": handle, "graph": graph, "fp8": fp8, "scalar": scalar, "o": o,
            "amax": (amax_s, amax_o), "amax_buffers": (one(0.0), one(0.0)), "descale_s": one(1.0 / FP8_MAX),
            "scale_s": one(FP8_MAX),
            "workspace": torch.empty(graph.get_workspace_size(), device=device, dtype=torch.uint8)}


def run_graph(built: dict, q8, k8, v8, descale_q, descale_k, descale_v, out) -> None:
    """Executes build_graph()'s graph on the current stream: `out` gets O / (O_HEADROOM descale_v)."""
    built["cudnn"].set_stream(built["handle"], torch.cuda.current_stream(q8.device).cuda_stream)
    s, f = built["scalar"], built["fp8"]
    pack = {f["q"]: q8, f["k"]: k8, f["v"]: v8, s["descale_q"]: descale_q, s["descale_k"]: descale_k,
            s["descale_v"]: descale_v, s["descale_s"]: built["descale_s"], s["scale_s"]: built["scale_s"],
            s["scale_o"]: (descale_v * O_HEADROOM).reciprocal(), built["o"]: out,
            built["amax"][0]: built["amax_buffers"][0], built["amax"][1]: built["amax_buffers"][1]}
    built["graph"].execute(pack, built["workspace"], handle=built["handle"])


class CudnnFp8Sdpa:
    """cuDNN fp8 SDPA graphs, one per (shapes, strides, dtype, device), built on first use; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._graphs: dict = {}
        self._handles: dict = {}
        self._declined: dict = {}  # key -> why cuDNN would not build that graph (those calls run sdpa)

    def __call__(self, q8, k8, v8, descale_q, descale_k, descale_v):
        """O in e4m3, scaled by 1 / (O_HEADROOM descale_v), laid out like q8. Where cuDNN declines the graph, the
        same from sdpa over the dequantized inputs (said once in the log for each shape)."""
        device_index = q8.device.index if q8.device.index is not None else torch.cuda.current_device()
        key = (tuple(q8.shape), q8.stride(), tuple(k8.shape), k8.stride(), v8.stride(), q8.dtype, device_index)
        with self._lock, torch.cuda.device(device_index):
            built = None if key in self._declined else self._graphs.get(key)
            if built is None and key not in self._declined:
                try:
                    import cudnn

                    if device_index not in self._handles:
                        self._handles[device_index] = cudnn.create_handle()
                    built = self._graphs[key] = build_graph(cudnn, self._handles[device_index], q8, k8, v8)
                    log.info("cuDNN fp8 SDPA graph built for q %s, k %s on cuda:%d", tuple(q8.shape),
                             tuple(k8.shape), device_index)
                except Exception as exc:  # an unsupported shape or cuDNN: that shape runs sdpa, never fails a job
                    self._declined[key] = f"{type(exc).__name__}: {exc}"[:500]
                    log.warning("cuDNN declined the fp8 SDPA graph for q %s (%s): sdpa runs for it",
                                tuple(q8.shape), self._declined[key])
            if built is None:
                return _sdpa_fallback(q8, k8, v8, descale_q, descale_k, descale_v)
            out = torch.empty_like(q8)
            run_graph(built, q8, k8, v8, descale_q, descale_k, descale_v, out)
        return out


def _sdpa_fallback(q8, k8, v8, descale_q, descale_k, descale_v):
    """What the fp8 op returns, computed by sdpa in bf16 from the dequantized inputs."""
    q, k, v = ((t.to(torch.bfloat16) * d.to(torch.bfloat16)).transpose(1, 2)
               for t, d in ((q8, descale_q), (k8, descale_k), (v8, descale_v)))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    return (out / (descale_v * O_HEADROOM).to(out.dtype)).to(q8.dtype).contiguous()


_KERNEL = CudnnFp8Sdpa()
_OP = None


def register_op():
    """torch.ops.runpod_worker.cudnn_fp8_sdpa (a custom op: torch.compile keeps it whole), registered once."""
    global _OP
    if _OP is None:
        @torch.library.custom_op("runpod_worker::cudnn_fp8_sdpa", mutates_args=(), device_types="cuda")
        def cudnn_fp8_sdpa(q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor, descale_q: torch.Tensor,
                           descale_k: torch.Tensor, descale_v: torch.Tensor) -> torch.Tensor:
            return _KERNEL(q8, k8, v8, descale_q, descale_k, descale_v)

        @cudnn_fp8_sdpa.register_fake
        def _(q8, k8, v8, descale_q, descale_k, descale_v):
            return torch.empty_like(q8)

        _OP = torch.ops.runpod_worker.cudnn_fp8_sdpa.default  # the operator itself: what torch.compile records
    return _OP


def quantize(x):
    """x scaled by its amax into e4m3 (contiguous), and the descale ([1, 1, 1, 1] fp32) that undoes it."""
    descale = (x.abs().amax().float() / FP8_MAX).clamp(min=1e-12)
    return (x / descale).to(torch.float8_e4m3fn).contiguous(), descale.reshape(1, 1, 1, 1)


def self_attention(q, k, v, centre: bool = True):
    """softmax(q k^T / sqrt(d)) v for [B, L, H, D] bf16 q, k, v, through cuDNN's fp8 kernel (register_op() first);
    bf16 out. k and v are centred first (smooth()), so that a channel's offset does not take e4m3's range
    (centre=False: not, for benchmarks/attention_bench.py --centring to compare)."""
    v_mean = None
    if centre:
        k, v, v_mean = smooth(k, v)
    (q8, dq), (k8, dk), (v8, dv) = quantize(q), quantize(k), quantize(v)
    out = _OP(q8, k8, v8, dq, dk, dv).float() * (dv * O_HEADROOM)
    return (out if v_mean is None else out + v_mean.float()).to(q.dtype)  # rounded to bf16 once


def smooth(k, v):
    """k and v less their means over the tokens (per batch, head and channel), and v's mean. Exact for attention
    without a mask: subtracting k's mean moves all of one query's scores by the same amount, which softmax ignores;
    each output row is a weighted mean of v's rows, so v's mean is added back afterwards (exactly, where the fp8 P's
    rows would sum to a little over or under 1). What is left to quantize is the part that differs from token to
    token: a channel with a large constant offset (as real models' keys have) no longer sets the per-tensor scale."""
    v_mean = v.mean(dim=1, keepdim=True)
    return k - k.mean(dim=1, keepdim=True), v - v_mean, v_mean


def problem_here() -> str | None:
    """support_problem() for this process's GPU and packages."""
    if torch is None:
        return "torch is not installed"
    capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
    try:
        import cudnn  # noqa: F401  (imported, not only found: its backend library must load)

        importable = True
    except Exception:
        importable = False
    return support_problem(capability, importable)


def install(attention_module, loader, problem: str | None, modules=None) -> list[str]:
    """MODE in the wrapper: the loader's choice, and attention() routed in every module that imported it; with a
    `problem` (support_problem's answer) MODE runs sdpa, and the log says why."""
    if problem is None:
        register_op()
    else:
        log.warning("attention_mode %s cannot run here (%s): it runs as sdpa (bf16 attention)", MODE, problem)
    original = attention_module.attention
    routed = route(original, self_attention if problem is None else None,
                   (torch.bfloat16,) if torch is not None else ())
    names = rebind(original, routed, modules)
    add_choice(loader)
    return names
