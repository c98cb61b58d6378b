"""umt5 reads a prompt's own tokens, not 512 of padding: a patch of ComfyUI-WanVideoWrapper's T5EncoderModel.

The wrapper's text encoder (`wanvideo/modules/t5.py: T5EncoderModel`, used by WanVideoTextEncode and
WanVideoTextEncodeCached) pads every prompt to 512 tokens, runs umt5-xxl's 24 layers over all of them, and
then keeps only the first `seq_len` rows of the output. The padding is masked out of every attention (its
keys get the dtype's lowest value before the softmax, so their weights are exactly 0), the position bias
depends only on the distance between two tokens, and everything else works token by token: the kept rows do
not depend on the padding. So the batch is cut to its longest prompt before the model runs. A prompt of 30
tokens then costs 30/512 of the compute: on a CPU without bf16 matrix units an encode drops from minutes to
seconds; on a GPU it is a small part of a cold start.

The embeddings are the same up to the order of floating-point sums (tests/test_t5_trim.py measures the
difference on the wrapper's own encoder). WORKER_T5_TRIM=0 turns the patch off.
"""

from __future__ import annotations

import logging
import os
import time

from .patching import find_class, prompt_handler

log = logging.getLogger("runpod_worker.t5_trim")
_APPLIED: set[str] = set()


def enabled() -> bool:
    return os.environ.get("WORKER_T5_TRIM", "1") != "0"


class TrimmedTokenizer:
    """Wraps the wrapper's HuggingfaceTokenizer: when it returns a mask, the columns after the batch's longest
    prompt (padding in every row) are dropped from the ids and the mask."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, sequence, **kwargs):
        result = self.inner(sequence, **kwargs)
        if not kwargs.get("return_mask"):
            return result
        ids, mask = result
        longest = max(int(mask.gt(0).sum(dim=1).max()), 1)
        if mask[:, longest:].any():  # padding not all at the end (a tokenizer that pads on the left): as it is
            return ids, mask
        return ids[:, :longest], mask[:, :longest]

    def __getattr__(self, name):  # seq_len, vocab_size, tokenizer, ...: the wrapped tokenizer's
        if name == "inner":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


def trim_padding(cls) -> None:
    """Instances of `cls` (T5EncoderModel) encode with their tokenizer wrapped in TrimmedTokenizer."""
    original = cls.__call__

    def __call__(self, texts, device):
        if not isinstance(self.tokenizer, TrimmedTokenizer):
            self.tokenizer = TrimmedTokenizer(self.tokenizer)
        started = time.monotonic()
        context = original(self, texts, device)
        print(f"[runpod worker] umt5 encoded {len(context)} prompt(s) of {max((len(c) for c in context), default=0)} "
              f"tokens (not {self.text_len}) in {time.monotonic() - started:.1f} s")
        return context

    __call__.__wrapped__ = original
    cls.__call__ = __call__


def apply() -> set[str]:
    """Patches T5EncoderModel once it is loaded; returns the names applied so far."""
    if enabled() and "t5_trim" not in _APPLIED:
        cls = find_class("T5EncoderModel", "wanvideo.modules.t5")
        if cls is not None:
            trim_padding(cls)
            _APPLIED.add("t5_trim")
    return _APPLIED


on_prompt = prompt_handler(apply, lambda names: "umt5 encodes each prompt's own tokens, without the padding to 512 "
                                                "(t5_trim)", "the umt5 padding trim", log)
