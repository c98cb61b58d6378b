"""Writes test_input.json: a small self-contained sample job (media inline as base64).

The video is ffmpeg's moving test pattern, the audio a sequence of tones; `make run` sends this job.
"""

from __future__ import annotations

import base64
import json
import subprocess
import tempfile
from pathlib import Path

SECONDS = 8


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        video, audio = Path(tmp) / "pattern.mp4", Path(tmp) / "tones.m4a"
        ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=256x256:rate=25:duration={SECONDS}",
               "-c:v", "libx264", "-preset", "veryslow", "-crf", "32", "-pix_fmt", "yuv420p", str(video))
        ffmpeg("-f", "lavfi", "-i", f"sine=frequency=330:beep_factor=4:duration={SECONDS - 0.3}:sample_rate=16000",
               "-c:a", "aac", "-b:a", "24k", str(audio))
        job = {"input": {
            "workflow": "restyle",
            "input_type": "video",
            "video": "data:video/mp4;base64," + base64.b64encode(video.read_bytes()).decode(),
            "audio": "data:audio/mp4;base64," + base64.b64encode(audio.read_bytes()).decode(),
            "prompt": "a test pattern, sharpened",
            "width": 256, "height": 256, "fps": 25,
            "output": {"destination": "volume"},
        }}
    Path("test_input.json").write_text(json.dumps(job, indent=1) + "\n")
    print(f"test_input.json: {Path('test_input.json').stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
