"""Media as people have it, made with ffmpeg and espeak-ng: phone photos, text-to-speech audio as the APIs
return it, camcorder MPEG-TS, MP4 with edit lists, anamorphic PAL, browser (MediaRecorder) WebM, AVIF,
animated WebP and HEIC photos."""

from __future__ import annotations

import base64
import json
import struct
import subprocess
from pathlib import Path

import numpy as np

from media_samples.factory import make_index_video

FFMPEG = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y"]


def ffmpeg(*arguments: str) -> None:
    subprocess.run([*FFMPEG, *arguments], check=True)


def probe_json(path: Path, *entries: str) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-of", "json", *entries, str(path)], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)


# -- audio -----------------------------------------------------------------------------------------------

def speech_wav(path: Path, text: str, silence_after_s: float = 0.0) -> Path:
    """Text spoken by espeak-ng (22.05 kHz mono), with silence after it as TTS output often has."""
    spoken = path.with_suffix(".spoken.wav")
    subprocess.run(["espeak-ng", "-w", str(spoken), text], check=True)
    ffmpeg("-i", str(spoken), "-af", f"apad=pad_dur={silence_after_s}", str(path))
    spoken.unlink()
    return path


def adts_aac(wav: Path, path: Path) -> Path:
    """Raw ADTS AAC, as text-to-speech APIs return it: no container, so no declared duration."""
    ffmpeg("-i", str(wav), "-c:a", "aac", "-b:a", "64k", "-f", "adts", str(path))
    return path


def vbr_mp3_without_xing(wav: Path, path: Path) -> Path:
    """VBR MP3 with neither an ID3 tag nor a Xing header: its base64 starts with "//", its length is a guess."""
    ffmpeg("-i", str(wav), "-c:a", "libmp3lame", "-q:a", "2", "-write_xing", "0", "-id3v2_version", "0",
           "-f", "mp3", str(path))
    return path


def decoded_seconds(path: Path) -> float:
    """The audio's length by decoding every sample (what the container says does not count)."""
    raw = subprocess.run([*FFMPEG[:-1], "-i", str(path), "-vn", "-f", "s16le", "-ac", "1", "-ar", "48000", "pipe:1"],
                         capture_output=True, check=True).stdout
    return len(raw) / 2 / 48000


def declared_seconds(path: Path) -> float:
    """The length ffprobe reports from the container (an estimate for raw AAC and MP3 without Xing)."""
    return float(probe_json(path, "-show_entries", "format=duration")["format"]["duration"])


# -- pictures --------------------------------------------------------------------------------------------

def phone_jpeg(path: Path, width: int = 640, height: int = 480) -> Path:
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={width}x{height}", "-frames:v", "1", "-q:v", "3", str(path))
    return path


def colour_patches(path: Path, width: int, height: int, colours: list[str]) -> Path:
    """A PNG of vertical bars of the given colours (0xRRGGBB), side by side."""
    bar = width // len(colours)
    sources = [f"color=c={c}:size={bar}x{height}" for c in colours]
    inputs = [arg for source in sources for arg in ("-f", "lavfi", "-i", source)]
    ffmpeg(*inputs, "-filter_complex", "".join(f"[{i}]" for i in range(len(colours))) + f"hstack=inputs={len(colours)}",
           "-frames:v", "1", str(path))
    return path


def avif_still(path: Path, width: int = 320, height: int = 240) -> Path:
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={width}x{height}", "-frames:v", "1", "-c:v", "libaom-av1",
           "-still-picture", "1", "-cpu-used", "8", str(path))
    return path


def animated_webp(path: Path) -> Path:
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x96:rate=10", "-frames:v", "10", "-loop", "0", "-c:v", "libwebp_anim",
           str(path))
    return path


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _full_box(kind: bytes, version: int, payload: bytes) -> bytes:
    return _box(kind, bytes([version, 0, 0, 0]) + payload)


def _find_boxes(data: bytes, path: list[bytes]) -> list[bytes]:
    """Payloads of the boxes at `path` (container types descended into), in an ISO-BMFF byte string."""
    found, position = [], 0
    while position + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[position:position + 8])
        payload = data[position + 8:position + size]
        if kind == path[0]:
            found += [payload] if len(path) == 1 else _find_boxes(payload, path[1:])
        position += size
    return found


def heic_photo(path: Path, size: int = 64) -> Path:
    """An iPhone-style HEIC: one HEVC-coded picture as an HEIF item (ftyp heic, meta with pitm/iinf/iloc/iprp,
    mdat), built from a frame libx265 encodes into an MP4 (whose hvcC and sample it reuses)."""
    mp4 = path.with_suffix(".x265.mp4")
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}x{size}", "-frames:v", "1", "-c:v", "libx265",
           "-x265-params", "log-level=error", "-tag:v", "hvc1", str(mp4))
    data = mp4.read_bytes()
    mp4.unlink()
    stbl = [b"moov", b"trak", b"mdia", b"minf", b"stbl"]
    stsd = _find_boxes(data, stbl + [b"stsd"])[0]
    hvcc = _box(b"hvcC", _find_boxes(stsd[8 + 8 + 78:], [b"hvcC"])[0])  # entry count, hvc1 header, its fields
    stsz = _find_boxes(data, stbl + [b"stsz"])[0]  # a constant size, or 0 and each sample's
    sample_size = struct.unpack(">I", stsz[4:8])[0] or struct.unpack(">I", stsz[12:16])[0]
    chunk_offset = struct.unpack(">I", _find_boxes(data, stbl + [b"stco"])[0][8:12])[0]
    sample = data[chunk_offset:chunk_offset + sample_size]

    def meta(offset: int) -> bytes:
        item = struct.pack(">HH", 1, 0) + struct.pack(">H", 1) + struct.pack(">II", offset, len(sample))
        return _full_box(b"meta", 0, b"".join([
            _full_box(b"hdlr", 0, b"\0" * 4 + b"pict" + b"\0" * 13),
            _full_box(b"pitm", 0, struct.pack(">H", 1)),
            _full_box(b"iloc", 0, bytes([0x44, 0x00]) + struct.pack(">H", 1) + item),
            _full_box(b"iinf", 0, struct.pack(">H", 1) + _full_box(b"infe", 2, struct.pack(">HH", 1, 0) + b"hvc1\0")),
            _box(b"iprp", _box(b"ipco", hvcc + _full_box(b"ispe", 0, struct.pack(">II", size, size)))
                 + _full_box(b"ipma", 0, struct.pack(">IH", 1, 1) + bytes([2, 0x81, 0x02]))),
        ]))

    ftyp = _box(b"ftyp", b"heic" + struct.pack(">I", 0) + b"mif1heic")
    head = ftyp + meta(0)
    path.write_bytes(ftyp + meta(len(head) + 8) + _box(b"mdat", sample))
    return path


# -- video -----------------------------------------------------------------------------------------------

def camcorder_ts(path: Path, frames: int, fps: float = 25, wrap: bool = True) -> Path:
    """An index video (media_samples/factory.py) as a camcorder writes MPEG-TS: H.264 with B-frames and short
    GOPs, AC-3 sound, and timestamps that start a couple of seconds before the 33-bit wrap (so they wrap
    inside the file) or at 1.4 s like any TS."""
    source = make_index_video(path.with_suffix(".src.mp4"), frames, fps, with_audio_s=frames / fps)
    offset = ["-output_ts_offset", "95440"] if wrap else []
    ffmpeg("-i", str(source), "-c:v", "libx264", "-preset", "ultrafast", "-crf", "8", "-bf", "2", "-g", "12",
           "-c:a", "ac3", *offset, "-f", "mpegts", str(path))
    source.unlink()
    return path


def mp4_with_edit_list(path: Path, frames: int, fps: float, kind: str) -> Path:
    """An index video whose MP4 edit list starts the picture late ("delay": an empty edit of 0.5 s) or skips
    its first 0.6 s ("skip": the frames before are in the file but not shown)."""
    source = make_index_video(path.with_suffix(".src.mp4"), frames, fps, with_audio_s=frames / fps)
    cut = ["-itsoffset", "0.5", "-i", str(source)] if kind == "delay" else ["-ss", "0.6", "-i", str(source)]
    ffmpeg(*cut, "-c", "copy", str(path))
    source.unlink()
    return path


def disc_frame(width: int, height: int, radius: int) -> np.ndarray:
    """A grey frame with a white disc in its centre, in square pixels."""
    y, x = np.mgrid[0:height, 0:width]
    inside = (x - width / 2 + 0.5) ** 2 + (y - height / 2 + 0.5) ** 2 < radius ** 2
    frame = np.full((height, width, 3), 60, np.uint8)
    frame[inside] = 230
    return frame


def anamorphic_pal(path: Path, square_png: Path, frames: int = 25) -> Path:
    """PAL widescreen as DV and DVD carry it: 720x576 stored, shown 1024x576 (sample aspect ratio 64:45), made
    from a square-pixel 1024x576 picture of a disc (also written, as the reference)."""
    picture = disc_frame(1024, 576, 200)
    subprocess.run([*FFMPEG, "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "1024x576", "-i", "pipe:0", str(square_png)],
                   input=picture.tobytes(), check=True)
    ffmpeg("-loop", "1", "-i", str(square_png), "-frames:v", str(frames), "-r", "25",
           "-vf", "scale=720:576,setsar=64/45", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "10",
           "-pix_fmt", "yuv420p", str(path))
    return path


def browser_webm(path: Path, frames: int, fps: float = 25, audio_only_from: Path | None = None) -> Path:
    """What MediaRecorder writes: VP8 + Opus WebM streamed out as recorded, so with no duration and no index.
    With audio_only_from: that audio alone, as Opus WebM (a browser's voice recording)."""
    if audio_only_from is not None:
        data = subprocess.run([*FFMPEG, "-i", str(audio_only_from), "-c:a", "libopus", "-f", "webm", "pipe:1"],
                              capture_output=True, check=True).stdout
    else:
        source = make_index_video(path.with_suffix(".src.mp4"), frames, fps, with_audio_s=frames / fps)
        data = subprocess.run([*FFMPEG, "-i", str(source), "-c:v", "libvpx", "-b:v", "2M", "-c:a", "libopus",
                               "-f", "webm", "pipe:1"], capture_output=True, check=True).stdout
        source.unlink()
    path.write_bytes(data)
    return path


# -- how a client sends them -------------------------------------------------------------------------------

def raw_base64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def mime_base64(path: Path) -> str:
    """Base64 as MIME (and `base64` on the command line) writes it: lines of 76 characters, CRLF."""
    return base64.encodebytes(path.read_bytes()).decode().replace("\n", "\r\n")


def data_uri(path: Path, media_type: str) -> str:
    return f"data:{media_type};base64,{raw_base64(path)}"


# -- reading results ------------------------------------------------------------------------------------

def rgb_frames(path: Path, width: int, height: int) -> np.ndarray:
    """Every frame as RGB, converted with the matrix the stream is tagged with (ffmpeg's default)."""
    raw = subprocess.run([*FFMPEG[:-1], "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def rendered(path: Path, width: int, height: int, filters: str = "") -> np.ndarray:
    """An independent rendering of a picture: ffmpeg scales it to width x height (after `filters`) as RGB."""
    chain = ",".join(filter(None, [filters, f"scale={width}:{height}"]))
    raw = subprocess.run([*FFMPEG[:-1], "-i", str(path), "-frames:v", "1", "-vf", chain, "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "pipe:1"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(height, width, 3)


def colour_tags(path: Path) -> dict:
    stream = probe_json(path, "-select_streams", "v:0", "-show_entries",
                        "stream=color_space,color_primaries,color_transfer,color_range")["streams"][0]
    return {key: stream.get(key) for key in ("color_space", "color_primaries", "color_transfer", "color_range")}
