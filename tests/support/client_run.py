"""Runs the client as a user does (`python -m client ...`, a process of its own) and reads what it prints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The client reads these; the tests decide them.
CLIENT_VARIABLES = ("RUNPOD_API_KEY", "RUNPOD_ENDPOINT_ID", "RUNPOD_ENDPOINT_BASE_URL", "BUCKET_ENDPOINT_URL",
                    "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY", "BUCKET_NAME", "BUCKET_REGION",
                    "BUCKET_INPUT_PREFIX", "BUCKET_INPUT_URL_EXPIRY_S")


def client_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARIABLES}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def run_client(*args: str, env: dict | None = None, timeout_s: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "client", *args], cwd=REPO, env=env or client_env(),
                          capture_output=True, text=True, timeout=timeout_s)


@dataclass
class RunningClient:
    """A client process whose output is collected line by line while it runs."""

    process: subprocess.Popen
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, *args: str, env: dict | None = None) -> RunningClient:
        # Ctrl-C must reach it as KeyboardInterrupt even where the test run ignores SIGINT (started in the
        # background, nohup): Python keeps an ignored SIGINT ignored.
        process = subprocess.Popen([sys.executable, "-m", "client", *args], cwd=REPO, env=env or client_env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        running = cls(process)
        for stream, lines in ((process.stdout, running.stdout), (process.stderr, running.stderr)):
            threading.Thread(target=lambda s=stream, out=lines: out.extend(iter(s.readline, "")), daemon=True).start()
        return running

    def wait_for(self, text: str, timeout_s: float, stream: str = "stdout") -> str:
        """The first line of `stream` holding text, waiting for it up to timeout_s (or the process's end)."""
        lines = getattr(self, stream)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            exited = self.process.poll() is not None
            time.sleep(0.3 if exited else 0.1)  # once it exited, give the reader threads a moment
            found = next((line for line in list(lines) if text in line), None)
            if found is not None:
                return found
            if exited:
                break
        raise AssertionError(f"the client did not print {text!r} on {stream}:\n{''.join(self.stdout)}\n"
                             f"{''.join(self.stderr)}")

    def finish(self, timeout_s: float = 120) -> int:
        code = self.process.wait(timeout=timeout_s)
        time.sleep(0.2)  # the reader threads catch up
        return code
