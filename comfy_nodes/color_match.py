"""Colour matching of a segment's frames to the job's shared colour reference, on ComfyUI's device.

Every segment of a job is generated on its own, so two segments drift to slightly different colours and a
seam shows the jump. Matching each segment to one reference that all of them share (the reference image in
image mode; in video mode the source frames, frame i of the output to source frame i, so that both sides of
an overlap match to the very same frames) removes the jump wherever it comes from.

The match is a per-channel transfer of mean and spread (Reinhard's, in RGB): frame i becomes
(x - mean_i) x (ref_spread_i / spread_i) + ref_mean_i, the statistics smoothed over `window` frames so
that a hand entering the frame changes the colours slowly, not at once. Frames arrive in batches
(add); a batch can be matched (match) once the frames its window reaches have arrived, so a batch is moved
to the device once. Torch only: this runs inside ComfyUI's process.
"""

from __future__ import annotations

import torch

GAIN_LIMITS = (0.5, 2.0)  # a spread is never stretched or squeezed more than this
# Statistics are taken on every 2nd pixel each way of a frame on the device (a quarter of the work), and on
# every 4th of a reference frame (which also cuts its transfer to a 16th): means and spreads of a whole
# frame barely move.
FRAME_STRIDE = 2
REFERENCE_STRIDE = 4
MIN_SPREAD = 1e-3


def rgb_to_yuv_means(rgb_means: torch.Tensor, kr: float, kb: float) -> torch.Tensor:
    """[N, 3] mean R, G, B in 0..1 -> [N, 3] mean Y, U, V in 8-bit units, limited range, with the matrix whose
    luma weights are kr and kb (SaveSegmentVideo's: segment_format.LUMA_WEIGHTS); the conversion is linear,
    so the means convert as the pixels do."""
    r, g, b = rgb_means.unbind(-1)
    luma = kr * r + (1 - kr - kb) * g + kb * b
    y = 16 + 219 * luma
    u = 128 + 224 * (b - luma) / (2 * (1 - kb))
    v = 128 + 224 * (r - luma) / (2 * (1 - kr))
    return torch.stack([y, u, v], dim=-1)


def channel_stats(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, H, W, C] -> per frame and channel mean and standard deviation, [N, 3] each."""
    pixels = frames[..., :3].float().reshape(frames.shape[0], -1, 3)
    return pixels.mean(dim=1), pixels.std(dim=1)


def smoothed(values: torch.Tensor, window: int) -> torch.Tensor:
    """[N, 3] -> the mean of each row's centred window of `window` rows (cut short at either end)."""
    half = max(0, window // 2)
    total = torch.cat([values.new_zeros(1, values.shape[1]), values.cumsum(dim=0)])
    index = torch.arange(values.shape[0], device=values.device)
    low, high = (index - half).clamp(min=0), (index + half + 1).clamp(max=values.shape[0])
    return (total[high] - total[low]) / (high - low).unsqueeze(1)


class ColorMatcher:
    """Matches `count` frames, given in order in batches, to `reference` (one image, or one per frame)."""

    def __init__(self, reference: torch.Tensor, count: int, window: int, device: torch.device):
        self.count, self.window, self.device = count, max(1, window), device
        self.means: list[torch.Tensor] = []  # per batch added, [n, 3] on the device
        self.spreads: list[torch.Tensor] = []
        self.arrived = 0
        ref_means, ref_spreads = self._reference_stats(reference)
        self.ref_means = smoothed(ref_means, self.window)
        self.ref_spreads = smoothed(ref_spreads, self.window)
        self._out_means = self._out_spreads = None

    def _reference_stats(self, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per output frame, the reference's channel means and spreads: the one image's for every frame, or
        frame i's (the last one's past its end)."""
        if reference.shape[0] == 1:
            means, spreads = channel_stats(reference[:, ::FRAME_STRIDE, ::FRAME_STRIDE].to(self.device))
            return means.expand(self.count, 3), spreads.expand(self.count, 3)
        means, spreads = [], []
        for first in range(0, min(self.count, reference.shape[0]), 64):
            sample = reference[first:min(self.count, first + 64), ::REFERENCE_STRIDE, ::REFERENCE_STRIDE]
            mean, spread = channel_stats(sample.to(self.device))
            means.append(mean)
            spreads.append(spread)
        means, spreads = torch.cat(means), torch.cat(spreads)
        missing = self.count - means.shape[0]
        if missing > 0:
            means = torch.cat([means, means[-1:].expand(missing, 3)])
            spreads = torch.cat([spreads, spreads[-1:].expand(missing, 3)])
        return means, spreads

    def add(self, batch: torch.Tensor) -> torch.Tensor:
        """Records the next frames' statistics (batch on the device); returns their means, unmatched."""
        means, spreads = channel_stats(batch[:, ::FRAME_STRIDE, ::FRAME_STRIDE])
        self.means.append(means)
        self.spreads.append(spreads)
        self.arrived += batch.shape[0]
        self._out_means = self._out_spreads = None
        return means

    def can_match(self, end: int) -> bool:
        """Whether frames before `end` can be matched: every frame their windows reach has arrived."""
        return self.arrived >= min(self.count, end + self.window // 2)

    def match(self, first: int, batch: torch.Tensor) -> torch.Tensor:
        """Frames [first, first + len(batch)) matched to the reference (values in 0..1)."""
        if self._out_means is None:
            self._out_means = smoothed(torch.cat(self.means), self.window)
            self._out_spreads = smoothed(torch.cat(self.spreads), self.window)
        end = first + batch.shape[0]
        means, spreads = self._out_means[first:end], self._out_spreads[first:end]
        gain = (self.ref_spreads[first:end] / spreads.clamp(min=MIN_SPREAD)).clamp(*GAIN_LIMITS)
        shape = (batch.shape[0], 1, 1, 3)
        offset = self.ref_means[first:end] - means * gain  # x -> x * gain + offset, one pass over the pixels
        return torch.addcmul(offset.view(shape), batch[..., :3].float(), gain.view(shape)).clamp_(0, 1)
