"""Segments on the endpoint's other workers: each sent as a segment job through RunPod's own queue (the
runpod SDK's Endpoint: run with a policy, status, cancel), watched, and its video parts taken back.

Never stuck, nothing lost: a segment job is taken back, cancelled, and the segment rendered on this worker
(render() returns None) when it is still queued after FANOUT_QUEUE_DEADLINE_S (no free worker: every other
worker busy, with other parents too, so that N parents on N workers cannot wait on each other), when its
progress stops changing for FANOUT_STALL_S (its worker died), when it runs past its deadline, when it fails
or vanishes (404 after its TTL), or when its media are too big to send and there is no bucket. Each job's
policy (executionTimeout, ttl) ends it on RunPod's side too if this worker dies. Cancelling the job cancels
every segment job (cancel_all); bucket files of the job are removed when it ends (close).
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from worker.media import bucket
from worker.planning.segment_plan import Segment, SegmentPlan
from worker.render.segment_video import SegmentVideo
from worker.render.segments import RenderJob, SegmentResult
from worker.request.errors import JobCancelled
from worker.request.settings import WorkerSettings

log = logging.getLogger(__name__)
POLL_S = 1.0
MIME = {".wav": "audio/wav", ".mp4": "video/mp4", ".png": "image/png", ".json": "application/json"}
RESULT_KEY = "segment_result"  # worker/segment_job.py's response
LOAD_MARGIN_S = 600.0  # a segment job's execution timeout covers a cold worker loading the models too


@dataclass
class RemoteSegments:
    """The endpoint's other workers as lanes of one job (its RenderJob); one per job."""

    job: RenderJob
    plan: SegmentPlan
    settings: WorkerSettings
    workers: int  # segment jobs in flight at once (the plan's other workers)
    errors: dict[int, str] = field(default_factory=dict)  # segment index -> why it was taken back
    _running: dict[int, str] = field(default_factory=dict)  # segment index -> segment job id
    _keys: list[str] = field(default_factory=list)  # bucket files of this job (media sent, videos received)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        import runpod  # the SDK's endpoint client (RUNPOD_ENDPOINT_BASE_URL moves its base URL)

        self.endpoint = runpod.Endpoint(self.settings.runpod_endpoint_id, api_key=self.settings.runpod_api_key)
        self._slots = threading.Semaphore(max(1, self.workers))

    # -- one segment ---------------------------------------------------------------------------------

    def render(self, segment: Segment, files: dict[str, Path]) -> SegmentResult | None:
        """The segment rendered by another worker, or None where it must be rendered here (errors[index] says
        why). JobCancelled when the job is cancelled meanwhile. At most `workers` segment jobs are out at once:
        a segment waits here for the one before it on its lane."""
        while not self._slots.acquire(timeout=POLL_S):
            if self.job.cancel.is_set():
                raise JobCancelled("the job was cancelled")
        try:
            return self._render(segment, files)
        finally:
            self._slots.release()

    def _render(self, segment: Segment, files: dict[str, Path]) -> SegmentResult | None:
        started = time.monotonic()
        body = self._body(segment, files)
        if body is None:
            return None
        try:
            job_id = self.endpoint.rp_client.post(f"{self.endpoint.endpoint_id}/run", body)["id"]
        except (requests.RequestException, RuntimeError, KeyError) as exc:
            return self._take_back(segment, f"the endpoint refused the segment job: {exc}")
        with self._lock:
            self._running[segment.index] = job_id
        log.info("segment %d (%s) sent to the endpoint as segment job %s", segment.index, segment.describe(), job_id)
        try:
            state = self._watch(segment, job_id, started)
        finally:
            with self._lock:
                self._running.pop(segment.index, None)
        if state is None:
            return None
        return self._result(segment, state, started)

    def _body(self, segment: Segment, files: dict[str, Path]) -> dict | None:
        """The /run body of the segment's job: media inline where the body stays under FANOUT_INLINE_MB, else
        in the bucket; None (render here) where neither can carry them."""
        request = self.job.request.model_dump(mode="json", exclude={"image", "video", "audio", "audio_2"})
        request.update(workflow=self.job.template.name, workers=0, dry_run=False)
        inline = sum(p.stat().st_size for p in files.values()) * 4 / 3 + 64 * 1024
        if inline <= self.settings.fanout_inline_mb * 2**20:
            for slot, path in files.items():
                request[slot] = f"data:{MIME.get(path.suffix, 'application/octet-stream')};base64," + \
                    base64.b64encode(path.read_bytes()).decode()
        elif self.settings.bucket_configured:
            for slot, path in files.items():
                key = f"segments/{self.job.job_id}/seg{segment.index}_{slot}{path.suffix}"
                with self._lock:
                    self._keys.append(key)
                request[slot] = bucket.put_file(path, key, self.settings, MIME.get(path.suffix, "application/octet-stream"),
                                                expiry_s=int(self._ttl_s(segment)))
        else:
            self._take_back(segment, f"its media ({inline / 2**20:.1f} MB as base64) are over FANOUT_INLINE_MB and no "
                                     "bucket (BUCKET_*) is set to carry them")
            return None
        timeout_s = self._execution_s(segment)
        return {"input": {"segment_job": {"parent_job": self.job.job_id, "parent_worker": _pod_id(),
                                          "request": request, "index": segment.index,
                                          "segments": [[s.start, s.end] for s in self.plan.segments]}},
                "policy": {"executionTimeout": int(timeout_s * 1000), "ttl": int(self._ttl_s(segment) * 1000)}}

    def _execution_s(self, segment: Segment) -> float:
        return self.job.deadline_s(segment) + LOAD_MARGIN_S

    def _ttl_s(self, segment: Segment) -> float:
        return self.settings.fanout_queue_deadline_s + self._execution_s(segment) + 60

    def _watch(self, segment: Segment, job_id: str, started: float) -> dict | None:
        """Polls the segment job to its end: its COMPLETED state, or None once it is taken back."""
        last_change, last_report, status = time.monotonic(), None, "IN_QUEUE"
        while True:
            if self.job.cancel.wait(POLL_S):
                self._cancel(job_id)
                raise JobCancelled("the job was cancelled")
            try:
                state = self.endpoint.rp_client.get(f"{self.endpoint.endpoint_id}/status/{job_id}")
            except requests.HTTPError as exc:
                gone = exc.response is not None and exc.response.status_code == 404
                return self._take_back(segment, f"segment job {job_id} " + ("vanished (404)" if gone else f"could not be "
                                                                            f"read: {exc}"), job_id)
            except (requests.RequestException, RuntimeError) as exc:
                if time.monotonic() - last_change > self.settings.fanout_stall_s:
                    return self._take_back(segment, f"the endpoint did not answer for segment job {job_id}: {exc}", job_id)
                continue
            now = time.monotonic()
            if state.get("status") != status or state.get("output") != last_report:
                status, last_report, last_change = state.get("status"), state.get("output"), now
            if status == "COMPLETED":
                return state
            if status in ("FAILED", "TIMED_OUT", "CANCELLED"):
                error = state.get("error") or status.lower().replace("_", " ")
                return self._take_back(segment, f"segment job {job_id} {status}: {error}", None, verbatim=error)
            if status == "IN_QUEUE":
                if now - started > self.settings.fanout_queue_deadline_s:
                    return self._take_back(segment, f"segment job {job_id} was still queued after "
                                                    f"{self.settings.fanout_queue_deadline_s:.0f} s "
                                                    "(FANOUT_QUEUE_DEADLINE_S): no other worker was free", job_id)
                continue
            self.job.progress.segment_remote(segment.index, _worker_of(last_report), last_report)
            if now - last_change > self.settings.fanout_stall_s:
                return self._take_back(segment, f"segment job {job_id} reported nothing new for "
                                                f"{self.settings.fanout_stall_s:.0f} s (FANOUT_STALL_S): its worker "
                                                "is gone", job_id)
            if now - started > self._execution_s(segment) + self.settings.fanout_queue_deadline_s:
                return self._take_back(segment, f"segment job {job_id} ran past its deadline", job_id)

    def _result(self, segment: Segment, state: dict, started: float) -> SegmentResult | None:
        """The segment job's video parts in the job folder, as the stitcher takes a local segment's."""
        result = (state.get("output") or {}).get(RESULT_KEY)
        if not isinstance(result, dict) or result.get("index") != segment.index:
            return self._take_back(segment, f"segment job {state.get('id')} answered without its segment's video")
        stem = self.job.work_dir / f"seg{segment.index}"
        try:
            parts = {part: self._fetch(info, stem.with_name(f"{stem.name}_remote_{part}{Path(info['name']).suffix}"))
                     for part, info in (result.get("parts") or {}).items()}
        except (OSError, KeyError, ValueError, requests.RequestException) as exc:
            return self._take_back(segment, f"the video of segment job {state.get('id')} could not be taken: {exc}")
        if result.get("split"):
            video = SegmentVideo(parts.get("body"), parts.get("head"), parts.get("tail"), split=True,
                                 stats=parts.get("stats"))
        else:
            video = SegmentVideo.whole(parts["body"], parts.get("stats"))
        missing = video.missing_parts(segment.frames, self.plan.overlap_with_previous(segment),
                                      self.plan.overlap_with_next(segment))
        if missing:
            return self._take_back(segment, f"segment job {state.get('id')} sent no {' and '.join(missing)}")
        worker = str(result.get("worker") or "worker")
        log.info("segment %d done on worker %s (%s) in %.1f s", segment.index, worker, result.get("instance"),
                 time.monotonic() - started)
        return SegmentResult(segment, video, str(result.get("instance") or "?"), result.get("gpu"),
                             time.monotonic() - started, float(result.get("comfy_seconds") or 0.0), time.monotonic(),
                             attempts=int(result.get("attempts") or 1), node_seconds=result.get("node_seconds") or {},
                             device_settings=result.get("device_settings"), started_at=started,
                             cold=bool(result.get("cold")), worker=worker)

    def _fetch(self, info: dict, dest: Path) -> Path:
        """One part of a segment job's video, from the response, the bucket or the shared volume."""
        if "data" in info:
            dest.write_bytes(base64.b64decode(info["data"], validate=True))
        elif "url" in info:
            with self._lock:
                self._keys.append(info["key"])
            with requests.get(info["url"], stream=True, timeout=60) as response:
                response.raise_for_status()
                with open(dest, "wb") as out:
                    for chunk in response.iter_content(1 << 20):
                        out.write(chunk)
        else:
            source = Path(info["path"]).resolve()
            volume = (self.settings.output_volume_dir / "segments").resolve()
            if not source.is_relative_to(volume):
                raise ValueError(f"{source} is not on the shared volume's segment folder")
            dest.write_bytes(source.read_bytes())
            source.unlink(missing_ok=True)
            if source.parent != volume:
                try:
                    source.parent.rmdir()
                except OSError:
                    pass
        return dest

    def _take_back(self, segment: Segment, why: str, cancel_job: str | None = None,
                   verbatim: str | None = None) -> None:
        if cancel_job is not None:
            self._cancel(cancel_job)
        self.errors[segment.index] = verbatim or why
        log.warning("segment %d is rendered here: %s", segment.index, why)
        return None

    # -- the job -------------------------------------------------------------------------------------

    def _cancel(self, job_id: str) -> None:
        try:
            self.endpoint.rp_client.post(f"{self.endpoint.endpoint_id}/cancel/{job_id}", None)
        except (requests.RequestException, RuntimeError) as exc:
            log.warning("could not cancel segment job %s (its policy ends it): %s", job_id, exc)

    def cancel_all(self) -> None:
        """Cancels every segment job of the job still running."""
        with self._lock:
            running = list(self._running.values())
        for job_id in running:
            self._cancel(job_id)

    def close(self) -> None:
        """Removes the job's files from the bucket (media sent, videos received)."""
        with self._lock:
            keys, self._keys = self._keys, []
        if keys and self.settings.bucket_configured:
            bucket.delete_keys(keys, self.settings)


def _pod_id() -> str:
    return os.environ.get("RUNPOD_POD_ID", "")


def _worker_of(report: dict | None) -> str:
    """How the parent's progress names a segment job's worker (its RUNPOD_POD_ID, as it reports it)."""
    return f"worker {(report or {}).get('worker') or '?'}"
