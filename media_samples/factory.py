"""Media for the tests and benchmarks: videos whose frames show their own index as a 16-cell bit pattern, and tones.

A frame's index survives scaling, sharpening, h264 and cross-fades between identical frames, so a
test can read back exactly which source frame ended up at each position of an output video.
"""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path
from typing import Callable

import numpy as np

from worker.media import segment_format

COLUMNS, ROWS = 8, 2  # 16 bits: up to 65535 frames


Colour = tuple[int, int, int]


def index_frame(index: int, width: int, height: int, background: Colour = (16, 16, 16),
                foreground: Colour = (235, 235, 235)) -> np.ndarray:
    """Frame `index`: the bits of the index as cells of `foreground` on `background` (RGB; the background's
    luma must stay below 128 and the foreground's above it)."""
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:] = background
    cell_w, cell_h = width // COLUMNS, height // ROWS
    for bit in range(COLUMNS * ROWS):
        if index >> bit & 1:
            row, col = divmod(bit, COLUMNS)
            frame[row * cell_h:(row + 1) * cell_h, col * cell_w:(col + 1) * cell_w] = foreground
    return frame


def make_index_video(path: Path, frames: int, fps: float, width: int = 128, height: int = 64,
                     with_audio_s: float | None = None,
                     colours: Callable[[int], tuple[Colour, Colour]] | None = None) -> Path:
    """An mp4 of `frames` frames, frame i showing i; optionally with a tone as its own audio, and with
    colours(i) = (background, foreground) of frame i."""
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:0"]
    if with_audio_s:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=220:duration={with_audio_s}", "-c:a", "aac"]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "8", "-pix_fmt", "yuv420p", str(path)]
    process = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    for i in range(frames):
        process.stdin.write(index_frame(i, width, height, *(colours(i) if colours else ())).tobytes())
    process.stdin.close()
    if process.wait() != 0:
        raise RuntimeError("ffmpeg could not write the index video")
    return path


def read_indices(path: Path) -> list[int]:
    """The index each frame of a video shows (see index_frame)."""
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                            "stream=width,height", "-of", "csv=p=0", str(path)],
                           capture_output=True, text=True, check=True)
    width, height = (int(v) for v in probe.stdout.strip().split(",")[:2])
    raw = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path), "-f", "rawvideo",
                          "-pix_fmt", "gray", "pipe:1"], capture_output=True, check=True).stdout
    frames = np.frombuffer(raw, dtype=np.uint8).reshape(-1, height, width)
    cell_w, cell_h = width // COLUMNS, height // ROWS
    indices = []
    for frame in frames:
        value = 0
        for bit in range(COLUMNS * ROWS):
            row, col = divmod(bit, COLUMNS)
            cell = frame[row * cell_h + cell_h // 4:(row + 1) * cell_h - cell_h // 4,
                         col * cell_w + cell_w // 4:(col + 1) * cell_w - cell_w // 4]
            if cell.mean() > 128:
                value |= 1 << bit
        indices.append(value)
    return indices


def make_tone(path: Path, seconds: float, rate: int = 16000, frequency: int = 440) -> Path:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"sine=frequency={frequency}:sample_rate={rate}:duration={seconds}", str(path)],
                   check=True)
    return path


def make_image(path: Path, width: int = 96, height: int = 96) -> Path:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size={width}x{height}", "-frames:v", "1", str(path)], check=True)
    return path


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def media_duration(path: Path, stream: str) -> float:
    """Duration of the first audio ('a') or video ('v') stream, in seconds."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", f"{stream}:0", "-show_entries",
                          "stream=duration", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True).stdout.strip()
    return float(out)


def frame_count(path: Path) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                          "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True).stdout.strip()
    return int(out)


def yuv420p_frames(path: Path, width: int, height: int) -> list[bytes]:
    """Every frame of a video as raw yuv420p bytes."""
    raw = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path), "-f", "rawvideo",
                          "-pix_fmt", "yuv420p", "pipe:1"], capture_output=True, check=True).stdout
    size = width * height * 3 // 2
    return [raw[i:i + size] for i in range(0, len(raw), size)]


def write_split_segment(frames: list[bytes], folder: Path, head: int, tail: int, width: int, height: int,
                        fps: float = 25.0, crf: int = 19, preset: str = "veryfast") -> dict[str, Path]:
    """A segment in SaveSegmentVideo's split form, written as the node writes it (comfy_nodes/, both following
    worker/media/segment_format.py): the first `head` and last `tail` frames raw in y4m files, the frames between
    piped raw to ffmpeg's x264."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = {"head": frames[:head], "body": frames[head:len(frames) - tail], "tail": frames[len(frames) - tail:]}
    files = {}
    for part, chunk in parts.items():
        if not chunk:
            continue
        path = folder / f"seg{segment_format.PART_ENDINGS[part]}"
        if part == "body":
            command = segment_format.encode_command(str(path), width, height, fps, crf, preset)
            subprocess.run(command, input=b"".join(chunk), check=True)
        else:
            raw = b"".join(b"FRAME\n" + frame for frame in chunk)
            path.write_bytes(segment_format.y4m_header(width, height, fps) + raw)
        files[part] = path
    return files


def make_speech(path: Path, sentences: list[str], pause_s: float = 0.8, rate: int = 22050) -> Path:
    """Real speech (espeak-ng, the Debian package) speaking `sentences` with a pause of pause_s after each
    but the last, as a mono WAV."""
    breaks = f"<break time='{round(pause_s * 1000)}ms'/>"
    ssml = "<speak>" + breaks.join(sentences) + "</speak>"
    spoken = path.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-m", "-w", str(spoken), ssml], check=True, capture_output=True)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(spoken), "-ar", str(rate), "-ac", "1",
                    str(path)], check=True)
    spoken.unlink()
    return path


def silences(path: Path, noise_db: float = -40.0, min_s: float = 0.3) -> list[tuple[float, float]]:
    """The (start, end) seconds of every stretch of audio quieter than noise_db for at least min_s, as
    ffmpeg's silencedetect filter finds them."""
    log = subprocess.run(["ffmpeg", "-nostdin", "-i", str(path), "-af", f"silencedetect=noise={noise_db}dB:d={min_s}",
                          "-f", "null", "-"], capture_output=True, text=True, check=True).stderr
    starts = [float(v) for v in re.findall(r"silence_start: (-?[\d.]+)", log)]
    ends = [float(v) for v in re.findall(r"silence_end: ([\d.]+)", log)]
    ends += [media_duration(path, "a")] * (len(starts) - len(ends))  # silent to the end
    return list(zip(starts, ends))
