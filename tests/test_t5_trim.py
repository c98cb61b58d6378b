"""comfy_nodes/t5_trim.py against the wrapper's real umt5 code: its T5EncoderModel, tokenizer and encoder blocks
(wanvideo/modules/t5.py, tokenizers.py), run in ComfyUI's own Python. The encoder is built at a small size
(same architecture: per-layer relative position bias, gated GELU) with random weights, so a test takes
seconds; the tokenizer is the one installed with the wrapper. The prompts are the templates' own."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from comfy_manager.settings import PoolSettings
from tests.support import comfy_nodes_parts, umt5_tokenizer

REPO = Path(__file__).resolve().parent.parent

# Runs in ComfyUI's venv: builds the wrapper's T5EncoderModel around a small encoder, encodes the prompts
# with and without the patch, prints what it saw as one JSON line.
SCRIPT = r"""
import importlib, importlib.util, json, sys, types
from pathlib import Path
import torch

comfy_path, wrapper, repo, prompts, dtype_name = sys.argv[1:6]
prompts = json.loads(prompts)
sys.path.insert(0, comfy_path)
package = types.ModuleType("wrapper_modules")  # the wrapper's modules folder, without its heavy __init__
package.__path__ = [str(Path(wrapper) / "wanvideo" / "modules")]
sys.modules["wrapper_modules"] = package
t5 = importlib.import_module("wrapper_modules.t5")
sys.path.insert(0, repo)
from tests.support import comfy_nodes_parts  # comfy_nodes' patch modules without ComfyUI's own packages
t5_trim = comfy_nodes_parts.load("t5_trim")

dtype = getattr(torch, dtype_name)
torch.manual_seed(0)
encoder = object.__new__(t5.T5EncoderModel)  # its __init__ would build umt5-xxl (on the meta device)
encoder.text_len, encoder.dtype = 512, dtype
encoder.tokenizer = t5.HuggingfaceTokenizer(name=str(Path(wrapper) / "configs" / "T5_tokenizer"), seq_len=512,
                                            clean="whitespace")
encoder.model = t5.T5Encoder(vocab=encoder.tokenizer.vocab_size, dim=64, dim_attn=64, dim_ffn=160, num_heads=4,
                             num_layers=3, num_buckets=32, shared_pos=False, dropout=0.0).eval().to(dtype)
seen = []
encoder.model.register_forward_pre_hook(lambda module, args: seen.append(list(args[0].shape)))

with torch.no_grad():
    padded = [encoder([p], "cpu")[0] for p in prompts] + [encoder(prompts, "cpu")]
    t5_trim.trim_padding(t5.T5EncoderModel)
    trimmed = [encoder([p], "cpu")[0] for p in prompts] + [encoder(prompts, "cpu")]

def flat(outputs):
    return [o for item in outputs for o in (item if isinstance(item, list) else [item])]

print(json.dumps({
    "model_inputs": seen,
    "rows": [list(o.shape) for o in flat(trimmed)],
    "padded_rows": [list(o.shape) for o in flat(padded)],
    "max_abs_diff": max(float((a.float() - b.float()).abs().max()) for a, b in zip(flat(padded), flat(trimmed))),
    "max_abs": max(float(a.float().abs().max()) for a in flat(padded)),
}))
"""


def template_prompts() -> list[str]:
    workflow = json.loads((REPO / "workflows" / "infinitetalk_image_single.json").read_text())
    encode = next(node for node in workflow.values() if node["class_type"] == "WanVideoTextEncode")
    return [encode["inputs"]["positive_prompt"], encode["inputs"]["negative_prompt"]]


def encode(dtype: str, prompts: list[str]) -> dict:
    settings = PoolSettings()
    wrapper = settings.comfy_path / "custom_nodes" / "ComfyUI-WanVideoWrapper"
    if not (wrapper / "wanvideo" / "modules" / "t5.py").exists():
        pytest.fail(f"ComfyUI-WanVideoWrapper is not installed under {settings.comfy_path}: run `make setup`")
    umt5_tokenizer.ensure(settings.comfy_path)
    done = subprocess.run([settings.python, "-c", SCRIPT, str(settings.comfy_path), str(wrapper), str(REPO),
                           json.dumps(prompts), dtype], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("bfloat16", 0.02)])
def test_trimmed_prompts_give_the_padded_embeddings(dtype, tolerance):
    prompts = template_prompts()
    result = encode(dtype, prompts)
    positive, negative = result["rows"][0][0], result["rows"][1][0]
    # tens of tokens, not 512 (74 and 121 with the stand-in tokenizer of ../shared, which splits finer than umt5's)
    assert 5 < positive < 200 and 5 < negative < 200, result
    # without the patch every call ran 512 positions; with it, each call ran its longest prompt only
    assert result["model_inputs"][:3] == [[1, 512], [1, 512], [2, 512]], result
    assert result["model_inputs"][3:] == [[1, positive], [1, negative], [2, max(positive, negative)]], result
    # the same rows come back (each prompt's own tokens), with the same values up to the order of sums
    assert result["rows"] == result["padded_rows"]
    assert result["rows"][2:] == [[positive, 64], [negative, 64]]
    assert result["max_abs_diff"] <= tolerance * max(1.0, result["max_abs"]), result


class Tensorish:
    """The little of a torch tensor the trim uses (comparison, sum, max, any, slices), over numpy."""

    def __init__(self, values):
        self.values = values

    def gt(self, n):
        return Tensorish(self.values > n)

    def sum(self, dim):
        return Tensorish(self.values.sum(axis=dim))

    def max(self):
        return self.values.max()

    def any(self):
        return bool(self.values.any())

    def __getitem__(self, key):
        return Tensorish(self.values[key])


class PaddingTokenizer:
    """Pads each text (a token per character) to 8 positions on the given side, as the wrapper's
    HuggingfaceTokenizer pads to 512."""

    seq_len = 8

    def __init__(self, side: str = "right"):
        self.side = side

    def __call__(self, sequence, **kwargs):
        import numpy as np

        rows = [[ord(c) for c in text][:8] for text in sequence]
        pads = [[0] * (8 - len(row)) for row in rows]
        ids = np.array([row + pad if self.side == "right" else pad + row for row, pad in zip(rows, pads)])
        if kwargs.get("return_mask"):
            return Tensorish(ids), Tensorish((ids > 0).astype(int))
        return Tensorish(ids)


def load_trim():
    return comfy_nodes_parts.load("t5_trim")


@pytest.mark.parametrize("side, width", [("right", 3), ("left", 8)])
def test_only_padding_at_the_end_is_cut(side, width):
    trimmed = load_trim().TrimmedTokenizer(PaddingTokenizer(side))
    ids, mask = trimmed(["ab", "abc"], return_mask=True)
    assert ids.values.shape == mask.values.shape == (2, width)
    assert mask.values.sum() == 5  # every real token kept
    assert trimmed(["ab"]).values.shape == (1, 8)  # without a mask: untouched


def test_a_wrapped_tokenizer_copies_and_pickles():
    import copy
    import pickle

    trim = load_trim()
    wrapped = trim.TrimmedTokenizer(PaddingTokenizer())
    for clone in (copy.copy(wrapped), copy.deepcopy(wrapped)):
        assert clone.seq_len == 8 and isinstance(clone.inner, PaddingTokenizer)
    sys_modules_name = trim.__name__
    import sys

    sys.modules[sys_modules_name] = trim  # pickle finds the class by its module
    try:
        assert pickle.loads(pickle.dumps(wrapped)).seq_len == 8
    finally:
        del sys.modules[sys_modules_name]
