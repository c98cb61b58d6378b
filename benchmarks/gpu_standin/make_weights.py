"""Random-weight Wan 2.1 files at real shapes, for a GPU benchmark through real ComfyUI.

    python make_weights.py MODELS_ROOT [--tiny] [--device cuda|cpu] [--dtype bf16|fp16|fp32]

writes, under MODELS_ROOT (a ComfyUI models folder):
    diffusion_models/wan_standin_t2v_1.3B.safetensors  Wan 2.1 T2V 1.3B shapes (or wan_standin_tiny.safetensors)
    vae/wan_standin_vae.safetensors                    Wan 2.1 VAE shapes (dim 96, z 16)
    custom_nodes/gpu_standin -> ../nodes                the stand-in ComfyUI nodes
    extra_model_paths.yaml                             for ComfyUI's --extra-model-paths-config

Key names and shapes follow ComfyUI 0.3.75: comfy/ldm/wan/model.py (WanModel, detected as Wan 2.1 T2V
by comfy/model_detection.py from head.modulation, with num_heads = dim // 128) and comfy/ldm/wan/vae.py
(detected by comfy/sd.py from decoder.middle.0.residual.0.gamma). Weights are N(0, std) with norms at 1
and biases at 0, so activations stay finite; the pictures they make are noise, the compute is real.
Needs only torch and safetensors (ComfyUI's own Python has both).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent

# Wan 2.1 T2V 1.3B, and a tiny variant ComfyUI still detects as Wan (head dim stays 128: dim // 128 heads).
DIT_REAL = dict(dim=1536, layers=30, ffn=8960)
DIT_TINY = dict(dim=256, layers=2, ffn=512)
DIT_FILES = {False: "wan_standin_t2v_1.3B.safetensors", True: "wan_standin_tiny.safetensors"}
VAE_FILE = "wan_standin_vae.safetensors"


def wan_dit_shapes(dim: int, layers: int, ffn: int, in_dim: int = 16, out_dim: int = 16, text_dim: int = 4096,
                   freq_dim: int = 256, patch: tuple[int, int, int] = (1, 2, 2)) -> dict[str, tuple]:
    """State-dict shapes of comfy.ldm.wan.model.WanModel(model_type='t2v')."""
    shapes: dict[str, tuple] = {}

    def linear(name, n_in, n_out):
        shapes[f"{name}.weight"] = (n_out, n_in)
        shapes[f"{name}.bias"] = (n_out,)

    shapes["patch_embedding.weight"] = (dim, in_dim, *patch)
    shapes["patch_embedding.bias"] = (dim,)
    linear("text_embedding.0", text_dim, dim)
    linear("text_embedding.2", dim, dim)
    linear("time_embedding.0", freq_dim, dim)
    linear("time_embedding.2", dim, dim)
    linear("time_projection.1", dim, 6 * dim)
    for i in range(layers):
        block = f"blocks.{i}"
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                linear(f"{block}.{attn}.{proj}", dim, dim)
            shapes[f"{block}.{attn}.norm_q.weight"] = (dim,)
            shapes[f"{block}.{attn}.norm_k.weight"] = (dim,)
        shapes[f"{block}.norm3.weight"] = (dim,)  # cross_attn_norm=True: an affine LayerNorm
        shapes[f"{block}.norm3.bias"] = (dim,)
        linear(f"{block}.ffn.0", dim, ffn)
        linear(f"{block}.ffn.2", ffn, dim)
        shapes[f"{block}.modulation"] = (1, 6, dim)
    linear("head.head", dim, out_dim * math.prod(patch))
    shapes["head.modulation"] = (1, 2, dim)
    return shapes


def wan_vae_shapes(dim: int = 96, z_dim: int = 16, dim_mult=(1, 2, 4, 4), num_res_blocks: int = 2,
                   temporal_downsample=(False, True, True)) -> dict[str, tuple]:
    """State-dict shapes of comfy.ldm.wan.vae.WanVAE (attn_scales=[], as comfy/sd.py builds it)."""
    shapes: dict[str, tuple] = {}

    def conv(name, n_in, n_out, kernel):
        shapes[f"{name}.weight"] = (n_out, n_in, *kernel)
        shapes[f"{name}.bias"] = (n_out,)

    def residual(name, n_in, n_out):
        shapes[f"{name}.residual.0.gamma"] = (n_in, 1, 1, 1)
        conv(f"{name}.residual.2", n_in, n_out, (3, 3, 3))
        shapes[f"{name}.residual.3.gamma"] = (n_out, 1, 1, 1)
        conv(f"{name}.residual.6", n_out, n_out, (3, 3, 3))
        if n_in != n_out:
            conv(f"{name}.shortcut", n_in, n_out, (1, 1, 1))

    def attention(name, d):
        shapes[f"{name}.norm.gamma"] = (d, 1, 1)
        conv(f"{name}.to_qkv", d, 3 * d, (1, 1))
        conv(f"{name}.proj", d, d, (1, 1))

    def resample(name, d, mode):
        if mode.startswith("down"):
            conv(f"{name}.resample.1", d, d, (3, 3))
            if mode == "downsample3d":
                conv(f"{name}.time_conv", d, d, (3, 1, 1))
        else:
            conv(f"{name}.resample.1", d, d // 2, (3, 3))
            if mode == "upsample3d":
                conv(f"{name}.time_conv", d, 2 * d, (3, 1, 1))

    def middle(name, d):
        residual(f"{name}.0", d, d)
        attention(f"{name}.1", d)
        residual(f"{name}.2", d, d)

    # encoder (outputs mean and log-variance: 2 * z_dim channels)
    dims = [dim * u for u in (1, *dim_mult)]
    conv("encoder.conv1", 3, dims[0], (3, 3, 3))
    k = 0
    for i, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(num_res_blocks):
            residual(f"encoder.downsamples.{k}", n_in, n_out)
            n_in, k = n_out, k + 1
        if i != len(dim_mult) - 1:
            resample(f"encoder.downsamples.{k}", n_out, "downsample3d" if temporal_downsample[i] else "downsample2d")
            k += 1
    middle("encoder.middle", dims[-1])
    shapes["encoder.head.0.gamma"] = (dims[-1], 1, 1, 1)
    conv("encoder.head.2", dims[-1], 2 * z_dim, (3, 3, 3))
    conv("conv1", 2 * z_dim, 2 * z_dim, (1, 1, 1))
    conv("conv2", z_dim, z_dim, (1, 1, 1))

    # decoder
    temporal_upsample = temporal_downsample[::-1]
    dims = [dim * u for u in (dim_mult[-1], *dim_mult[::-1])]
    conv("decoder.conv1", z_dim, dims[0], (3, 3, 3))
    middle("decoder.middle", dims[0])
    k = 0
    for i, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
        if i in (1, 2, 3):
            n_in //= 2  # the previous upsample halved the channels
        for _ in range(num_res_blocks + 1):
            residual(f"decoder.upsamples.{k}", n_in, n_out)
            n_in, k = n_out, k + 1
        if i != len(dim_mult) - 1:
            resample(f"decoder.upsamples.{k}", n_out, "upsample3d" if temporal_upsample[i] else "upsample2d")
            k += 1
    shapes["decoder.head.0.gamma"] = (dims[-1], 1, 1, 1)
    conv("decoder.head.2", dims[-1], 3, (3, 3, 3))
    return shapes


def random_state_dict(shapes: dict[str, tuple], dtype: torch.dtype, device: str, std: float,
                      seed: int) -> dict[str, torch.Tensor]:
    """Norm scales (norm*.weight, *.gamma) at 1, biases at 0, everything else N(0, std)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "gamma" or (leaf == "weight" and ".norm" in name):
            tensor = torch.ones(shape, device=device, dtype=dtype)
        elif leaf == "bias":
            tensor = torch.zeros(shape, device=device, dtype=dtype)
        else:
            tensor = torch.empty(shape, device=device, dtype=torch.float32).normal_(0.0, std, generator=generator)
            tensor = tensor.to(dtype)
        out[name] = tensor.cpu().contiguous()
    return out


def write(path: Path, shapes: dict[str, tuple], dtype: torch.dtype, device: str, std: float, seed: int) -> None:
    started = time.monotonic()
    state = random_state_dict(shapes, dtype, device, std, seed)
    made = time.monotonic()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    params = sum(t.numel() for t in state.values())
    print(f"{path}: {len(state)} tensors, {params / 1e6:.1f} M parameters, {path.stat().st_size / 2**30:.2f} GiB "
          f"{str(dtype).removeprefix('torch.')}; generated in {made - started:.1f} s on {device}, "
          f"written in {time.monotonic() - made:.1f} s", flush=True)


def write_comfy_config(root: Path) -> Path:
    """extra_model_paths.yaml for ComfyUI's --extra-model-paths-config, and the node package link."""
    nodes_dir = root / "custom_nodes"
    nodes_dir.mkdir(parents=True, exist_ok=True)
    link = nodes_dir / "gpu_standin"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(HERE / "nodes", target_is_directory=True)
    config = root / "extra_model_paths.yaml"
    config.write_text(f"gpu_standin:\n  base_path: {root}\n  diffusion_models: diffusion_models\n"
                      f"  vae: vae\n  custom_nodes: custom_nodes\n")
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models_root", type=Path, help="a ComfyUI models folder (diffusion_models/, vae/ go under it)")
    parser.add_argument("--tiny", action="store_true", help=f"a tiny DiT {DIT_TINY} for CPU validation")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None,
                        help="default: bf16 on the GPU, fp32 on the CPU")
    parser.add_argument("--std", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-vae", action="store_true", help="keep an existing VAE file")
    args = parser.parse_args()
    dtype_name = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    root = args.models_root.resolve()
    started = time.monotonic()

    dit = DIT_TINY if args.tiny else DIT_REAL
    write(root / "diffusion_models" / DIT_FILES[args.tiny], wan_dit_shapes(**dit), dtype, args.device, args.std,
          args.seed)
    vae_path = root / "vae" / VAE_FILE
    if not (args.skip_vae and vae_path.exists()):
        write(vae_path, wan_vae_shapes(), dtype, args.device, args.std, args.seed + 1)
    config = write_comfy_config(root)
    print(f"done in {time.monotonic() - started:.1f} s; start ComfyUI with --extra-model-paths-config {config}")


if __name__ == "__main__":
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    main()
