"""ComfyUI nodes for the GPU stand-in benchmark (see ../README.md).

StandinTextConditioning  a seeded random text embedding in place of umt5-xxl's
StandinWindowedSampler   samples a video latent window by window, like InfiniteTalk, through comfy.sample
"""

from __future__ import annotations

import logging

import torch

import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

log = logging.getLogger(__name__)


def latent_frames(pixel_frames: int) -> int:
    """Latent frames the Wan 2.1 VAE uses for pixel_frames frames (4x temporal compression, first frame alone)."""
    return (pixel_frames - 1) // 4 + 1


class StandinTextConditioning:
    """CONDITIONING shaped like Wan 2.1's text encoder output: [1, tokens, 4096].

    The real encoder is umt5-xxl (about 11 GB in bf16). It runs once per prompt, costs next to nothing
    per frame, and random DiT weights make its meaning irrelevant, so a seeded random tensor of the
    same shape gives the diffusion model exactly the cross-attention work the real one would.
    """

    CATEGORY = "benchmark/standin"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff}),
            "tokens": ("INT", {"default": 512, "min": 1, "max": 4096}),
            "std": ("FLOAT", {"default": 0.02, "min": 0.0, "max": 10.0, "step": 0.001}),
        }}

    def encode(self, seed, tokens, std):
        generator = torch.Generator().manual_seed(seed)
        cond = torch.randn((1, tokens, 4096), generator=generator) * std
        # The format CLIPTextEncode produces: a list of [tensor, options] pairs.
        return ([[cond, {}]],)


class StandinWindowedSampler:
    """Samples the latent in temporal windows of window_frames pixel frames, the way InfiniteTalk does.

    Consecutive windows overlap by motion_frames' latent frames: those frames of a new window start as
    the previous window's result and are held fixed (a noise mask), the rest is denoised from noise. A
    start_latent (e.g. the VAE-encoded reference image) is held fixed the same way at the start of the
    first window. Each window is one comfy.sample.sample call, the path KSampler uses, so the cost is
    windows x steps x model passes and grows linearly with the number of frames; the last window is
    only as long as the frames left.
    """

    CATEGORY = "benchmark/standin"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "latent": ("LATENT",),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff}),
                "steps": ("INT", {"default": 4, "min": 1, "max": 1000}),
                "cfg": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
                "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {"default": "uni_pc"}),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"default": "simple"}),
                "window_frames": ("INT", {"default": 81, "min": 5, "max": 4097, "step": 4}),
                "motion_frames": ("INT", {"default": 9, "min": 1, "max": 4097, "step": 4}),
            },
            "optional": {"start_latent": ("LATENT",)},
        }

    def sample(self, model, positive, negative, latent, seed, steps, cfg, sampler_name, scheduler,
               window_frames, motion_frames, start_latent=None):
        samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
        total = samples.shape[2]
        window = latent_frames(window_frames)
        motion = min(latent_frames(motion_frames), window - 1)
        out = samples.clone()
        held = 0  # leading latent frames of the current window that are already known
        if start_latent is not None:
            start = start_latent["samples"][:, :, :total]
            out[:, :, :start.shape[2]] = start.to(out)
            held = min(start.shape[2], window - 1)

        begin, index = 0, 0
        while True:
            end = min(begin + window, total)
            chunk = out[:, :, begin:end].clone()
            mask = None
            if held > 0:
                mask = torch.ones((1, 1, *chunk.shape[2:]), dtype=torch.float32)
                mask[:, :, :held] = 0.0  # 0: keep the given latent, 1: denoise
            noise = comfy.sample.prepare_noise(chunk, seed + index)
            log.info("standin window %d: latent frames %d-%d of %d (%d held)", index, begin, end - 1, total, held)
            out[:, :, begin:end] = comfy.sample.sample(
                model, noise, steps, cfg, sampler_name, scheduler, positive, negative, chunk,
                denoise=1.0, noise_mask=mask, callback=latent_preview.prepare_callback(model, steps),
                disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed + index)
            if end == total:
                break
            begin, held, index = end - motion, motion, index + 1
        result = latent.copy()
        result["samples"] = out
        result.pop("noise_mask", None)
        return (result,)


NODE_CLASS_MAPPINGS = {
    "StandinTextConditioning": StandinTextConditioning,
    "StandinWindowedSampler": StandinWindowedSampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "StandinTextConditioning": "Stand-in text conditioning (random, umt5 shape)",
    "StandinWindowedSampler": "Stand-in windowed sampler (InfiniteTalk-like)",
}
