"""Writes every model file of models/manifest.json with random values, at the shapes, key names and dtypes
the pinned ComfyUI-WanVideoWrapper's loaders read, so the InfiniteTalk templates run without the real
weights (the output is finite noise; the compute is the real model's).

    python scripts/make_random_weights.py OUT_DIR [--full-size] [--vae light|full] [--only KIND,...] [--force]

Run it with ComfyUI's Python (COMFYUI_PATH, default .comfyui/ComfyUI, must hold the wrapper in
custom_nodes/). Each manifest entry's `kind` says how its file is made:

  dit            the Wan 2.1 I2V DiT, scaled fp8 (fp8 weights + a `.scale_weight` per block Linear). Small by
                 default: width 192, which the loader does not know, so it builds 12 heads x 30 blocks (CPU
                 tests); --full-size: width 5120, 40 heads x 40 blocks (the real 14B, 16.6 GB; for a GPU).
  audio_layers   InfiniteTalk's audio cross-attention per block + the audio projection, at the DiT's width.
  text_encoder   umt5-xxl, always full size (the loader hard-codes its config): 11.4 GB of bf16.
  vae            the Wan 2.1 VAE; every tensor is filled (the wrapper skips weight init: garbage decodes NaN).
                 Small by default: every width a quarter (pruning_rate 0.75, the layout of LightX2V's pruned
                 "lightVAE", which WanVideoVAELoader recognises by its decoder's first width, 96 for 384), so the
                 same VAE code runs at about a sixteenth of its convolutions' cost (CPU tests); --full-size: the
                 real Wan 2.1 VAE (for a GPU). --vae light|full overrides either (a GPU's speed with the pruned
                 VAE: --full-size --vae light).
  clip_vision    ComfyUI's CLIP ViT-H vision tower (fixed config).
  wav2vec2       the wrapper's wav2vec2 (fixed config), keys `wav2vec2.*` as Wav2VecModelLoader maps them.
  lora           a LoRA over every block Linear of the DiT (rank from the file name's `rankN`), in the
                 `diffusion_model.<module>.lora_down/lora_up/alpha` layout.

Values come from one block of Gaussian noise, tiled and scaled per tensor (fan-in scaling, unit norms,
zero biases), which is fast enough to write 34 GB in about a minute and keeps activations finite.
OUT_DIR gets `extra_model_paths.yaml` for ComfyUI's --extra-model-paths-config, and a stamp: a second
run with the same manifest files, script and size writes nothing (tests keep the files in
RANDOM_WEIGHTS_DIR, default ~/.cache/comfy-worker/random-weights, so only a machine's first run pays).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import re
import struct
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parent.parent
COMFYUI = Path(os.environ.get("COMFYUI_PATH", REPO / ".comfyui" / "ComfyUI")).resolve()
WRAPPER = "ComfyUI-WanVideoWrapper"

# Before torch is imported: ComfyUI modules read their command line when imported.
sys.argv, ARGV = [sys.argv[0], "--cpu"], sys.argv[1:]
sys.path.insert(0, str(COMFYUI))

import torch  # noqa: E402
from torch import nn  # noqa: E402

SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32",
                      torch.float8_e4m3fn: "F8_E4M3"}
FP8_MAX = 448.0
FP8_SPREAD = 64.0  # fp8 values are N(0, 1) x 64: well inside e4m3's range, with its full precision
NOISE = 1 << 22  # values in the noise block every tensor is tiled from


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    fill: str  # "normal" (scaled by std), "ones", "zeros", "fp8" (N(0,1) x FP8_SPREAD), "const"
    std: float = 1.0

    @property
    def nbytes(self) -> int:
        return torch.Size(self.shape).numel() * torch.empty((), dtype=self.dtype).element_size()


class Noise:
    """Gaussian noise, made once, handed out as tiles: tensor i starts at its own offset in the block."""

    def __init__(self, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.block = torch.randn(NOISE, generator=generator)
        self._cast: dict[torch.dtype, torch.Tensor] = {}

    def values(self, count: int, dtype: torch.dtype, scale: float, offset: int) -> torch.Tensor:
        """`count` values of N(0, scale^2), in `dtype`."""
        key = (dtype, scale)
        if key not in self._cast:
            self._cast[key] = (self.block * scale).clamp(-FP8_MAX, FP8_MAX).to(dtype)
        source = self._cast[key].roll(offset % NOISE)
        repeats = -(-count // NOISE)
        return source.repeat(repeats)[:count] if repeats > 1 else source[:count].clone()


def make_tensor(spec: TensorSpec, noise: Noise, index: int) -> torch.Tensor:
    if spec.fill == "ones":
        return torch.ones(spec.shape, dtype=spec.dtype)
    if spec.fill == "zeros":
        return torch.zeros(spec.shape, dtype=spec.dtype)
    if spec.fill == "const":
        return torch.full(spec.shape, spec.std, dtype=spec.dtype)
    count = torch.Size(spec.shape).numel()
    scale = FP8_SPREAD if spec.fill == "fp8" else spec.std
    return noise.values(count, spec.dtype, scale, offset=index * 7919).reshape(spec.shape)


def write_safetensors(path: Path, specs: list[TensorSpec], noise: Noise) -> int:
    """Streams the tensors into a .safetensors file one at a time (the T5 alone is 11 GB)."""
    header, offset = {}, 0
    for spec in specs:
        header[spec.name] = {"dtype": SAFETENSORS_DTYPES[spec.dtype], "shape": list(spec.shape),
                             "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for index, spec in enumerate(specs):
            tensor = make_tensor(spec, noise, index).contiguous()
            out.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
    partial.rename(path)
    return 8 + len(encoded) + offset


# ------------------------------------------------------------------------------------------- model shapes


@contextmanager
def empty_weights() -> Iterator[None]:
    """Modules built inside have their parameters on the meta device: shapes without memory."""
    with torch.device("meta"):
        yield


def wrapper_module(name: str):
    return importlib.import_module(f"custom_nodes.{WRAPPER}.{name}")


@dataclass(frozen=True)
class DitShape:
    width: int
    ffn: int
    heads: int
    blocks: int


SMALL_DIT = DitShape(width=192, ffn=384, heads=12, blocks=30)  # the loader's fallback: 12 heads x 30 blocks
FULL_DIT = DitShape(width=5120, ffn=13824, heads=40, blocks=40)  # Wan 2.1 I2V 14B


def build_dit(shape: DitShape) -> nn.Module:
    """The transformer as WanVideoModelLoader assembles it for InfiniteTalk, on the meta device."""
    model = wrapper_module("wanvideo.modules.model")
    multitalk = wrapper_module("multitalk.multitalk")
    with empty_weights():
        dit = model.WanModel(model_type="i2v", patch_size=(1, 2, 2), text_len=512, in_dim=36, dim=shape.width,
                             in_features=shape.width, out_features=shape.width, ffn_dim=shape.ffn,
                             ffn2_dim=shape.ffn, freq_dim=256, text_dim=4096, out_dim=16, num_heads=shape.heads,
                             num_layers=shape.blocks, eps=1e-6, attention_mode="sdpa", rope_func="comfy",
                             main_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                             dtype=torch.bfloat16)
        for block in dit.blocks:
            block.norm_x = model.WanLayerNorm(shape.width, dit.eps, elementwise_affine=True)
            block.audio_cross_attn = multitalk.SingleStreamMultiAttention(
                dim=shape.width, encoder_hidden_states_dim=768, num_heads=shape.heads, qkv_bias=True,
                class_range=24, class_interval=4)
        dit.multitalk_audio_proj = multitalk.AudioProjModel(seq_len=5, seq_len_vf=8, intermediate_dim=512,
                                                            output_dim=768, context_tokens=32,
                                                            norm_output_audio=True)
    return dit


def is_audio_layer(name: str) -> bool:
    return ".audio_cross_attn." in name or ".norm_x." in name or name.startswith("multitalk_audio_proj.")


def fan_in(shape: tuple[int, ...]) -> int:
    return max(1, torch.Size(shape[1:]).numel())


def plain_spec(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> TensorSpec:
    """Unit norms, zero biases, fan-in scaled weights: activations stay finite through deep stacks."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "gamma" or len(shape) == 1 and ("norm" in name or leaf == "weight") and leaf != "bias":
        return TensorSpec(name, shape, dtype, "ones")
    if leaf == "bias" or len(shape) == 0:
        return TensorSpec(name, shape, dtype, "zeros")
    if "modulation" in name:
        return TensorSpec(name, shape, dtype, "normal", 0.02)
    return TensorSpec(name, shape, dtype, "normal", fan_in(shape) ** -0.5)


def dit_specs(dit: nn.Module, audio: bool) -> list[TensorSpec]:
    """The DiT's (audio=False) or the InfiniteTalk file's (audio=True) tensors, scaled-fp8 layout: each
    block Linear's weight in fp8 with a float32 `.scale_weight`, the rest bf16."""
    linears = {name for name, module in dit.named_modules() if isinstance(module, nn.Linear)}
    specs = []
    for name, param in dit.named_parameters():
        if is_audio_layer(name) != audio:
            continue
        shape = tuple(param.shape)
        key = name.replace("multitalk_audio_proj.", "audio_proj.", 1) if audio else name
        owner = name.rsplit(".", 1)[0]
        if name.startswith("blocks.") and name.endswith(".weight") and owner in linears:
            key_owner = key.rsplit(".", 1)[0]
            specs.append(TensorSpec(key, shape, torch.float8_e4m3fn, "fp8"))
            specs.append(TensorSpec(f"{key_owner}.scale_weight", (1,), torch.float32, "const",
                                    fan_in(shape) ** -0.5 / FP8_SPREAD))
        else:
            specs.append(plain_spec(key, shape, torch.bfloat16))
    if not audio:
        specs.append(TensorSpec("scaled_fp8", (2,), torch.float8_e4m3fn, "zeros"))  # the loader's marker
    return specs


def lora_specs(dit: nn.Module, rank: int) -> list[TensorSpec]:
    """A rank-`rank` pair for every block Linear; up-projections small, so the LoRA moves the model a little."""
    specs = []
    for name, module in dit.named_modules():
        if name.startswith("blocks.") and isinstance(module, nn.Linear) and not is_audio_layer(name + "."):
            specs += [
                TensorSpec(f"diffusion_model.{name}.lora_down.weight", (rank, module.in_features), torch.bfloat16,
                           "normal", module.in_features ** -0.5),
                TensorSpec(f"diffusion_model.{name}.lora_up.weight", (module.out_features, rank), torch.bfloat16,
                           "normal", 0.01 / rank),
                TensorSpec(f"diffusion_model.{name}.alpha", (), torch.bfloat16, "const", float(rank)),
            ]
    return specs


def t5_specs() -> list[TensorSpec]:
    """umt5-xxl's encoder in the wrapper's own key names (token_embedding, blocks.N.attn.q ...), bf16."""
    t5 = wrapper_module("wanvideo.modules.t5")
    with empty_weights():
        encoder = t5.T5Encoder(vocab=256384, dim=4096, dim_attn=4096, dim_ffn=10240, num_heads=64, num_layers=24,
                               num_buckets=32, shared_pos=False, dropout=0.1)
    specs = []
    for name, param in encoder.named_parameters():
        shape = tuple(param.shape)
        if "token_embedding" in name:
            specs.append(TensorSpec(name, shape, torch.bfloat16, "normal", 1.0))
        elif "pos_embedding" in name:
            specs.append(TensorSpec(name, shape, torch.bfloat16, "normal", 0.5))
        else:
            specs.append(plain_spec(name, shape, torch.bfloat16))
    return specs


LIGHT_VAE_PRUNING = 0.75  # the small VAE: WanVideoVAELoader loads a VAE whose decoder starts at width 96 this way


def vae_specs(light: bool) -> list[TensorSpec]:
    vae = wrapper_module("wanvideo.wan_video_vae")
    with empty_weights():
        model = vae.WanVideoVAE(dtype=torch.float32, pruning_rate=LIGHT_VAE_PRUNING if light else 0.0)
    return [plain_spec(name, tuple(t.shape), torch.bfloat16) for name, t in model.state_dict().items()]


def clip_vision_specs() -> list[TensorSpec]:
    import comfy.clip_model
    import comfy.clip_vision
    import comfy.ops
    config = json.loads((Path(comfy.clip_vision.__file__).parent / "clip_vision_config_h.json").read_text())
    model = comfy.clip_model.CLIPVisionModelProjection(config, torch.float16, "meta", comfy.ops.manual_cast)
    specs = []
    for name, t in model.state_dict().items():
        std = 0.02 if t.dim() > 1 else 1.0
        spec = plain_spec(name, tuple(t.shape), torch.float16)
        specs.append(TensorSpec(name, spec.shape, spec.dtype, spec.fill, std) if spec.fill == "normal" else spec)
    return specs


def wav2vec2_specs() -> list[TensorSpec]:
    from transformers import Wav2Vec2Config
    w2v = wrapper_module("multitalk.wav2vec2")
    config = json.loads((COMFYUI / "custom_nodes" / WRAPPER / "multitalk" / "wav2vec2_config.json").read_text())
    with empty_weights():
        model = w2v.Wav2Vec2Model(Wav2Vec2Config(**config))
    specs = []
    for name, param in model.named_parameters():  # the key names Wav2VecModelLoader looks up
        key = "wav2vec2." + name
        if "original0" in name:
            key = "wav2vec2.encoder.pos_conv_embed.conv.weight_g"
        elif "original1" in name:
            key = "wav2vec2.encoder.pos_conv_embed.conv.weight_v"
        spec = plain_spec(key, tuple(param.shape), torch.float16)
        if key.endswith("weight_g"):
            spec = TensorSpec(key, spec.shape, spec.dtype, "ones")
        specs.append(spec)
    return specs


# ----------------------------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class ModelFile:
    file: str
    folder: str
    kind: str

    def path(self, root: Path) -> Path:
        return root / self.folder / self.file


def lora_rank(file: str) -> int:
    match = re.search(r"rank(\d+)", file)
    return int(match.group(1)) if match else 16


def specs_for(entry: ModelFile, dit: Callable[[], nn.Module], light_vae: bool) -> list[TensorSpec]:
    makers: dict[str, Callable[[], list[TensorSpec]]] = {
        "dit": lambda: dit_specs(dit(), audio=False),
        "audio_layers": lambda: dit_specs(dit(), audio=True),
        "lora": lambda: lora_specs(dit(), lora_rank(entry.file)),
        "text_encoder": t5_specs,
        "vae": lambda: vae_specs(light_vae),
        "clip_vision": clip_vision_specs,
        "wav2vec2": wav2vec2_specs,
    }
    if entry.kind not in makers:
        raise SystemExit(f"{entry.file}: unknown kind {entry.kind!r} (known: {', '.join(makers)})")
    return makers[entry.kind]()


def stamp_for(entries: list[ModelFile], full_size: bool, light_vae: bool) -> str:
    """Names what was made: the manifest's files and kinds (not its notes), this script, the sizes."""
    made_from = json.dumps([(e.folder, e.file, e.kind) for e in entries]).encode() + Path(__file__).read_bytes()
    digest = hashlib.sha256(made_from + bytes([full_size, light_vae]))
    return f".random-weights-{'full' if full_size else 'small'}-{digest.hexdigest()[:16]}"


def write_extra_model_paths(root: Path, folders: set[str]) -> None:
    lines = ["random_weights:", f"  base_path: {root}"] + [f"  {folder}: {folder}" for folder in sorted(folders)]
    (root / "extra_model_paths.yaml").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write <folder>/<file> into")
    parser.add_argument("--full-size", action="store_true", help="the real 14B DiT and the real VAE (for a GPU)")
    parser.add_argument("--vae", choices=["light", "full"],
                        help="the VAE's size whatever --full-size says (default: light when small, full with it)")
    parser.add_argument("--only", default="", help="comma-separated kinds to write (default: all)")
    parser.add_argument("--manifest", type=Path, default=REPO / "models" / "manifest.json")
    parser.add_argument("--force", action="store_true", help="write even if the stamp says it is done")
    args = parser.parse_args(ARGV)

    root = args.out.resolve()
    entries = [ModelFile(m["file"], m["folder"], m["kind"]) for m in json.loads(args.manifest.read_text())["models"]]
    only = set(filter(None, args.only.split(",")))
    light_vae = args.vae == "light" if args.vae else not args.full_size
    stamp = root / stamp_for(entries, args.full_size, light_vae)
    if stamp.exists() and not only and not args.force and all(e.path(root).exists() for e in entries):
        print(f"random weights already in {root} ({stamp.name})")
        return

    import comfy.options
    comfy.options.enable_args_parsing()
    if not (COMFYUI / "custom_nodes" / WRAPPER).is_dir():
        raise SystemExit(f"{COMFYUI}/custom_nodes/{WRAPPER} is missing: run scripts/install_custom_nodes.sh")
    os.chdir(COMFYUI)  # the wrapper imports itself as custom_nodes.<name>

    dit_cache: list[nn.Module] = []

    def dit() -> nn.Module:
        if not dit_cache:
            dit_cache.append(build_dit(FULL_DIT if args.full_size else SMALL_DIT))
        return dit_cache[0]

    noise = Noise()
    for entry in entries:
        if only and entry.kind not in only:
            continue
        started = time.monotonic()
        size = write_safetensors(entry.path(root), specs_for(entry, dit, light_vae), noise)
        print(f"{entry.folder}/{entry.file}: {size / 1e9:.2f} GB in {time.monotonic() - started:.1f} s", flush=True)
    write_extra_model_paths(root, {e.folder for e in entries})
    if not only:
        for old in root.glob(".random-weights-*"):
            old.unlink()
        stamp.write_text("")


if __name__ == "__main__":
    main()
