"""The worker's own ComfyUI nodes (scripts/install_comfyui.sh links this folder into ComfyUI/custom_nodes).

SaveSegmentVideo  IMAGE batch -> a segment's video in the output folder, every frame kept; given the
                  segment's overlaps and the output's x264 settings, its body already encoded for the
                  final video (the stitcher then copies it instead of encoding it again); given a colour
                  reference, every frame matched to it first (color_match.py); beside it, what it
                  measured of the frames, for the worker's seam report.

wan_patches.py    small patches of ComfyUI-WanVideoWrapper that change no arithmetic (InfiniteTalk's audio
                  projection and, on big GPUs, its VAE stay on the GPU; the window's conditioning encode is
                  reused; fp8 fast matmuls fall back to bf16 ones below compute capability 8.9).

t5_trim.py        umt5 encodes each prompt's own tokens instead of 512 tokens of padding.

fp8_attention.py  attention_mode "cudnn_fp8" for the wrapper (the >= 38 GiB rows' default): the DiT's
                  self-attention through cuDNN's fp8 SDPA on Hopper GPUs, sdpa elsewhere.

patching.py       what those two share: finding a class ComfyUI loaded; applying the patches at its first prompt.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

import comfy.model_management
import comfy.utils
import folder_paths

from . import t5_trim, wan_patches
from .color_match import ColorMatcher, rgb_to_yuv_means


def _load_segment_format():
    """worker/media/segment_format.py (file names, frame rate, x264 options: what the stitcher expects), loaded by
    its path: this runs in ComfyUI's process, which has none of the worker's packages."""
    path = Path(__file__).resolve().parent.parent / "worker" / "media" / "segment_format.py"
    spec = importlib.util.spec_from_file_location("runpod_worker_segment_format", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


segment_format = _load_segment_format()


def _cap_vram() -> None:
    """WORKER_VRAM_LIMIT_GB (set by the worker from COMFY_VRAM_LIMIT_GB): this process's CUDA allocator may
    hold at most that many GiB, as on a card of that size (the pool also tells ComfyUI to keep the rest in
    reserve). Lets a benchmark run the templates as a 24, 32 or 48 GB GPU would, on a bigger one."""
    limit = wan_patches.vram_limit_gib()
    if limit is None or not torch.cuda.is_available():
        return
    device = comfy.model_management.get_torch_device()
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = min(1.0, limit * 1024**3 / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    print(f"[runpod worker] CUDA allocator capped at {limit:g} GiB ({fraction:.3f} of {total / 1024**3:.0f} GiB)")


_cap_vram()


def _register_patches() -> None:
    """wan_patches.py and t5_trim.py: applied when ComfyUI takes its first prompt, once every custom node package
    is loaded."""
    try:
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if server is not None:
        server.add_on_prompt_handler(wan_patches.on_prompt)
        server.add_on_prompt_handler(t5_trim.on_prompt)


_register_patches()
try:  # attention_mode "cudnn_fp8" in the wrapper's loader now, where ComfyUI happened to load the wrapper first (it
    # takes the custom node folders in the file system's order); else at the first prompt (wan_patches.on_prompt)
    wan_patches.add_modes()
except Exception:  # never fail the node package's import: apply() tries again at the first prompt, before ComfyUI
    # validates it (a prompt naming the mode is refused by the loader's list where it never took)
    wan_patches.log.exception("adding attention_mode cudnn_fp8 failed")

X264_PRESETS = ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"]
BATCH_FRAMES = 16  # frames converted on the GPU and moved to the CPU at a time: bounded extra memory
KEYFRAME_SECONDS = 1  # the worker's stitcher seeks into a whole-segment file; it decodes from the key frame before


class SaveSegmentVideo:
    """Writes a segment's frames for the worker's stitcher, one video frame per image, nothing dropped.

    Whole form (body_crf -1): one H.264 mp4 of every frame, with a fast preset, a low CRF and a key frame
    every second; the stitcher encodes the final video from it.

    Split form (body_crf >= 0): three files. The first head_frames frames (shared with the previous segment)
    and the last tail_frames (shared with the next) go raw into y4m files, for the stitcher to cross-fade;
    the frames between, which no other segment has, are encoded with the output's own settings
    (body_crf, body_preset), so that the stitcher joins them into the result by stream copy. Each instance
    thus encodes its own part of the final video, in parallel with the others, and nothing is encoded twice.

    Frames are converted to yuv420p (BT.709, limited range: segment_format.MATRIX, declared by every encode's
    segment_format.COLOUR_TAGS) on the GPU when there is one, and piped raw
    to the ffmpeg command line tool: the same ffmpeg, with the same x264 settings, as the stitcher's, so
    the body's stream headers match the stitcher's and the streams join.
    """

    CATEGORY = "image/video"
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE",),
                "fps": ("FLOAT", {"default": 25.0, "min": 0.01, "max": 1000.0, "step": 0.01}),
                "filename_prefix": ("STRING", {"default": "segment"}),
                "crf": ("INT", {"default": 12, "min": 0, "max": 51}),
                "preset": (X264_PRESETS, {"default": "ultrafast"}),
            },
            "optional": {
                "frames": ("INT", {"default": 0, "min": 0, "max": 1_000_000,
                                   "tooltip": "the segment's length: images past it are dropped; 0 keeps all"}),
                "head_frames": ("INT", {"default": 0, "min": 0, "max": 100_000}),
                "tail_frames": ("INT", {"default": 0, "min": 0, "max": 100_000}),
                "body_crf": ("INT", {"default": -1, "min": -1, "max": 51,
                                     "tooltip": "-1: one whole file; otherwise the split form's body CRF"}),
                "body_preset": (X264_PRESETS, {"default": "veryfast"}),
                "color_reference": ("IMAGE", {"tooltip": "match every frame's colours to this: one image, or "
                                                         "one per frame (the source frames)"}),
                "color_window": ("INT", {"default": 25, "min": 1, "max": 10_000,
                                         "tooltip": "frames the colour statistics are smoothed over"}),
            },
        }

    def save(self, images, fps, filename_prefix, crf, preset, frames=0, head_frames=0, tail_frames=0,
             body_crf=-1, body_preset="veryfast", color_reference=None, color_window=25):
        count, height, width = images.shape[0], images.shape[1], images.shape[2]
        if frames > count:
            raise ValueError(f"SaveSegmentVideo got {count} images, fewer than frames={frames}")
        count = frames or count
        if body_crf >= 0 and head_frames + tail_frames > count:
            raise ValueError(f"SaveSegmentVideo: head_frames {head_frames} + tail_frames {tail_frames} "
                             f"exceed the segment's {count} frames")
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), width, height)
        stem = os.path.join(folder, f"{name}_{counter:05}")
        size = (width + width % 2, height + height % 2)  # yuv420p needs even sides: the last row/column repeats
        if body_crf < 0:
            gop = ("-g", str(max(1, round(fps * KEYFRAME_SECONDS))))
            plan = [(0, count, lambda: X264Pipe(stem + segment_format.WHOLE_ENDING, size, fps, crf, preset, stitchable=False, extra=gop))]
        else:
            endings = segment_format.PART_ENDINGS
            bounds = (0, head_frames, count - tail_frames, count)
            writers = (lambda: Y4mWriter(stem + endings["head"], size, fps),
                       lambda: X264Pipe(stem + endings["body"], size, fps, body_crf, body_preset),
                       lambda: Y4mWriter(stem + endings["tail"], size, fps))
            plan = [(a, b, make) for a, b, make in zip(bounds, bounds[1:], writers) if b > a]
        parts = []  # (first frame, end frame, writer), each added once it exists, so a failure removes it
        progress = comfy.utils.ProgressBar(count)  # frames written: the worker's job progress (websocket)
        device = comfy.model_management.get_torch_device()
        clock = SaveClock()
        matcher = None if color_reference is None else ColorMatcher(color_reference, count, color_window, device)
        measured = FrameMeasures(count)
        try:
            for a, b, make in plan:
                parts.append((a, b, make()))
            waiting = []  # (first frame, batch on the device) until the colour matcher can match it
            for first in range(0, count, BATCH_FRAMES):
                last = min(count, first + BATCH_FRAMES)
                with clock.step("to the device"):
                    batch = images[first:last].to(device, non_blocking=True)
                if matcher is None:
                    self._write(parts, first, batch, measured, clock)
                else:
                    with clock.step("colour match"):
                        measured.unmatched(matcher.add(batch))
                    waiting.append((first, batch))
                    while waiting and (last == count or matcher.can_match(waiting[0][0] + waiting[0][1].shape[0])):
                        start, pending = waiting.pop(0)
                        with clock.step("colour match"):
                            pending = matcher.match(start, pending)
                        self._write(parts, start, pending, measured, clock)
                progress.update_absolute(last, count)
            with clock.step("ffmpeg finishing"):
                for _, _, writer in parts:
                    writer.close()
            measured.stats().write(stem + segment_format.STATS_ENDING)
        except BaseException:
            for _, _, writer in parts:
                writer.abort()
            raise
        files = {writer.path: {"filename": os.path.basename(writer.path), "subfolder": subfolder, "type": "output"}
                 for _, _, writer in parts}
        # mp4s under "images" (ComfyUI previews them as animations); the raw y4m overlaps under their own key.
        videos = [f for path, f in files.items() if path.endswith(".mp4")]
        overlaps = [f for path, f in files.items() if path.endswith(".y4m")]
        # The measurements (stem + STATS_ENDING) are not listed: the worker finds them by the video's name.
        self.last_seconds = clock.seconds
        print(f"[runpod worker] SaveSegmentVideo: {count} frames ({size[0]}x{size[1]}) {clock.summary()}", flush=True)
        return {"ui": {"images": videos, "animated": (True,), **({"overlaps": overlaps} if overlaps else {})}}

    @staticmethod
    def _write(parts, first: int, batch: torch.Tensor, measured: FrameMeasures, clock: SaveClock) -> None:
        """Frames [first, first + len(batch)) (on the device) as yuv420p to the writers whose range they touch."""
        with clock.step("yuv420p and to the CPU"):  # the frame-change measurements included
            planes = yuv420p_frames(batch)
            measured.changes(planes[:, :measured.luma_size(batch)])
            planes = planes.cpu().numpy()
        last = first + planes.shape[0]
        with clock.step("writing (waits for ffmpeg)"):
            for a, b, writer in parts:
                if a < last and b > first:
                    writer.write(planes[max(a, first) - first:min(b, last) - first].tobytes())


class SaveClock:
    """Where SaveSegmentVideo's time goes, by step, for its log line and benchmarks/save_node_cost.py. Work queued
    on a GPU is counted where the CPU waits for it (the copy of the planes to the CPU)."""

    def __init__(self):
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str):
        since = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - since

    def summary(self) -> str:
        """"in 7.91 s: to the device 1.20 s, ..., other 0.10 s" (other: starting ffmpeg, the colour reference's
        statistics, the measurements file)."""
        total = time.perf_counter() - self.started
        steps = {**self.seconds, "other": max(0.0, total - sum(self.seconds.values()))}
        return f"in {total:.2f} s: " + ", ".join(f"{step} {s:.2f} s" for step, s in steps.items())


class FrameMeasures:
    """What the node measures of the frames it saves, for the worker's seam report and output check
    (segment_format.SegmentStats): the change from each frame to the next, each frame's spread, and, where they are
    matched, every frame's mean colour before."""

    def __init__(self, count: int):
        self.count = count
        self._changes: list[float] = []
        self._spreads: list[float] = []
        self._last_luma: torch.Tensor | None = None
        self._unmatched: list[list[float]] = []

    @staticmethod
    def luma_size(batch: torch.Tensor) -> int:
        return (batch.shape[1] + batch.shape[1] % 2) * (batch.shape[2] + batch.shape[2] % 2)

    def changes(self, luma: torch.Tensor) -> None:
        """The next frames' Y planes, in order: the mean absolute change from each frame to the next, and each
        frame's standard deviation."""
        luma = luma.to(torch.int16)
        self._spreads += [round(s, 2) for s in luma.float().std(dim=1, correction=0).tolist()]
        if self._last_luma is not None:
            luma = torch.cat([self._last_luma, luma])
        if luma.shape[0] > 1:
            self._changes += (luma[1:] - luma[:-1]).abs().float().mean(dim=1).tolist()
        self._last_luma = luma[-1:]

    def unmatched(self, rgb_means: torch.Tensor) -> None:
        """The next frames' mean R, G, B before colour matching."""
        self._unmatched += [[round(m, 3) for m in row] for row in rgb_to_yuv_means(rgb_means.float(), KR, KB).tolist()]

    def stats(self):
        return segment_format.SegmentStats(self.count, [round(c, 3) for c in self._changes], bool(self._unmatched),
                                           self._unmatched or None, self._spreads)


# Luma weights of segment_format.MATRIX (BT.709): Y = KR R + KG G + KB B; U and V scale B - Y and R - Y to +-0.5.
KR, KB = segment_format.LUMA_WEIGHTS
KG = 1.0 - KR - KB


def yuv420p_frames(images: torch.Tensor) -> torch.Tensor:
    """[N, H, W, C] floats in 0..1 -> [N, bytes] uint8 yuv420p frames (planar Y, U, V; BT.709, limited range).

    Done on ComfyUI's device: decoded frames usually sit in CPU RAM as float32; this moves them once and
    returns a quarter of the bytes, leaving the CPU (shared by every instance of the machine) free.
    """
    device = comfy.model_management.get_torch_device()
    rgb = images[..., :3].to(device, non_blocking=True).float().clamp(0, 1)
    if rgb.shape[1] % 2 or rgb.shape[2] % 2:
        rgb = torch.nn.functional.pad(rgb.permute(0, 3, 1, 2), (0, rgb.shape[2] % 2, 0, rgb.shape[1] % 2),
                                      mode="replicate").permute(0, 2, 3, 1)
    n, h, w, _ = rgb.shape
    r, g, b = rgb.unbind(-1)
    y = 16 + 219 * (KR * r + KG * g + KB * b)
    # Chroma of each 2x2 block: the conversion is linear, so convert the block's mean colour.
    r2, g2, b2 = (c.reshape(n, h // 2, 2, w // 2, 2).mean(dim=(2, 4)) for c in (r, g, b))
    luma2 = KR * r2 + KG * g2 + KB * b2
    u = 128 + 224 * (b2 - luma2) / (2 * (1 - KB))
    v = 128 + 224 * (r2 - luma2) / (2 * (1 - KR))
    planes = [p.reshape(n, -1) for p in (y, u, v)]
    return torch.cat(planes, dim=1).round_().clamp_(0, 255).to(torch.uint8)


class Y4mWriter:
    """Raw yuv420p frames in a YUV4MPEG2 file (a header line, then "FRAME\\n" and the planes per frame).

    C420jpeg declares chroma sited at the centre of each 2x2 block, which is how yuv420p_frames makes it.
    The stitcher only reads these through raw pipes, so the siting never reaches an encoder's headers.
    """

    def __init__(self, path: str, size: tuple[int, int], fps: float):
        self.path, self.frame_bytes = path, size[0] * size[1] * 3 // 2
        self.file = open(path, "wb")
        self.file.write(segment_format.y4m_header(size[0], size[1], fps))

    def write(self, frames: bytes) -> None:
        for start in range(0, len(frames), self.frame_bytes):
            self.file.write(b"FRAME\n")
            self.file.write(frames[start:start + self.frame_bytes])

    def close(self) -> None:
        self.file.close()

    def abort(self) -> None:
        self.file.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


class X264Pipe:
    """An ffmpeg process encoding raw yuv420p frames from its stdin to an H.264 mp4, with the x264 options
    the worker's stitcher uses (stitchable: so that the stitcher can copy the stream into the result)."""

    def __init__(self, path: str, size: tuple[int, int], fps: float, crf: int, preset: str, stitchable: bool = True,
                 extra: tuple[str, ...] = ()):
        self.path = path
        command = segment_format.encode_command(path, size[0], size[1], fps, crf, preset, stitchable, extra)
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def write(self, frames: bytes) -> None:
        try:
            self.process.stdin.write(frames)
        except BrokenPipeError:
            self._fail()

    def close(self) -> None:
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        if self.process.wait() != 0:
            self._fail()

    def abort(self) -> None:
        self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stderr):
            try:
                pipe.close()
            except OSError:
                pass
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _fail(self):
        self.process.kill()
        self.process.wait()
        error = self.process.stderr.read().decode(errors="replace").strip()
        raise RuntimeError(f"ffmpeg could not encode {os.path.basename(self.path)}: {error[-500:]}")


NODE_CLASS_MAPPINGS = {"SaveSegmentVideo": SaveSegmentVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"SaveSegmentVideo": "Save segment video (for the worker's stitcher)"}
