"""Segments on the endpoint's other workers: each sent as a segment job through RunPod's own queue (the
runpod SDK's Endpoint: run with a policy, status, cancel), watched, and its video parts taken back.

Never stuck, nothing lost: a segment job is taken back, cancelled, and the segment rendered on this worker
(render() returns None) when it is still queued after its queue deadline (queue_deadline_for; no free worker:
every other worker busy, with other parents too, so that N parents on N workers cannot wait on each other),
when its progress stops changing for FANOUT_STALL_S (its worker died), when it runs past its deadline, when it
fails or vanishes (404 after its TTL), or when its media are too big to send and there is no bucket. Each
job's policy (executionTimeout, ttl) ends it on RunPod's side too if this worker dies. Cancelling the job
cancels every segment job (cancel_all); bucket files of the job are removed when it ends (close).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import binascii

import requests
from pydantic import ValidationError

from worker.media import bucket
from worker.planning.segment_plan import Segment, SegmentPlan
from worker.render.segment_video import SegmentVideo
from worker.render.segments import RenderJob, SegmentResult
from worker.request.errors import JobCancelled, JobFailed
from worker.request.job_request import safe_job_id
from worker.request.segment_job import RESULT_KEY, SegmentPart
from worker.request.segment_job import SegmentResult as RemoteResult
from worker.request.settings import WorkerSettings

log = logging.getLogger(__name__)
POLL_S = 1.0
MIME = {".wav": "audio/wav", ".mp4": "video/mp4", ".png": "image/png", ".json": "application/json"}
LOAD_MARGIN_S = 600.0  # a segment job's execution timeout covers a cold worker loading the models too


def queue_deadline_for(settings: WorkerSettings, load_s: float) -> float:
    """How long a segment job may stay queued before its segment is taken back: FANOUT_QUEUE_DEADLINE_S. With
    WARMUP_SIZE (set alike on every worker of the endpoint) a worker that RunPod starts for it takes jobs only
    after its warm-up, which loads the models: it may wait that cold start too (FANOUT_COLD_START_S plus the
    template's `load_s`, what the planner counts for it), or a cold start would be taken for no free worker."""
    warm_up = settings.fanout_cold_start_s + load_s if settings.warmup else 0.0
    return settings.fanout_queue_deadline_s + warm_up


@dataclass
class RemoteSegments:
    """The endpoint's other workers as lanes of one job (its RenderJob); one per job."""

    job: RenderJob
    plan: SegmentPlan
    settings: WorkerSettings
    workers: int  # segment jobs in flight at once (the plan's other workers)
    no_free_worker: bool = False  # a segment job waited out its queue deadline: no more are sent
    errors: dict[int, str] = field(default_factory=dict)  # segment index -> why it was taken back
    _running: dict[int, str] = field(default_factory=dict)  # segment index -> segment job id
    _keys: list[str] = field(default_factory=list)  # bucket files of this job (media sent, videos received)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        import runpod  # the SDK's endpoint client (RUNPOD_ENDPOINT_BASE_URL moves its base URL)

        self.endpoint = runpod.Endpoint(self.settings.runpod_endpoint_id, api_key=self.settings.runpod_api_key)
        self._slots = threading.Semaphore(max(1, self.workers))
        self.queue_deadline_s = queue_deadline_for(self.settings, self.job.template.load_s)

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
        if self.no_free_worker:
            return self._take_back(segment, "an earlier segment job found no free worker in time: the rest are "
                                            "rendered here")
        started = time.monotonic()
        try:
            body = self._body(segment, files)
        except JobCancelled:
            raise
        except Exception as exc:  # e.g. a bucket upload that failed: the segment is rendered here instead
            return self._take_back(segment, f"its segment job could not be prepared: {exc}")
        if body is None:
            return None
        try:
            job_id = self.endpoint.rp_client.post(f"{self.endpoint.endpoint_id}/run", body)["id"]
        except (requests.RequestException, RuntimeError, KeyError, TypeError) as exc:
            return self._take_back(segment, f"the endpoint refused the segment job: {exc}")
        with self._lock:
            self._running[segment.index] = job_id
        log.info("segment %d (%s) sent to the endpoint as segment job %s", segment.index, segment.describe(), job_id)
        try:
            state = self._watch(segment, job_id, started)
            return None if state is None else self._result(segment, state, started, job_id)
        except JobCancelled:
            raise
        except Exception as exc:  # an answer this worker cannot read (another version, say): rendered here
            return self._take_back(segment, f"segment job {job_id} could not be followed: {type(exc).__name__}: "
                                            f"{exc}", job_id)
        finally:
            with self._lock:
                self._running.pop(segment.index, None)

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
        return {"input": {"segment_job": {"parent_job": self.job.job_id,
                                          "parent_worker": self.settings.runpod_pod_id or "", "request": request, "index": segment.index,
                                          "segments": [[s.start, s.end] for s in self.plan.segments]}},
                "policy": {"executionTimeout": int(timeout_s * 1000), "ttl": int(self._ttl_s(segment) * 1000)}}

    def _execution_s(self, segment: Segment) -> float:
        return self.job.deadline_s(segment) + LOAD_MARGIN_S

    def _ttl_s(self, segment: Segment) -> float:
        return self.queue_deadline_s + self._execution_s(segment) + 60

    def _watch(self, segment: Segment, job_id: str, started: float) -> dict | None:
        """Polls the segment job to its end: its COMPLETED state, or None once it is taken back."""
        last_change, last_report, status = time.monotonic(), None, "IN_QUEUE"
        while True:
            if self.job.cancel.wait(POLL_S):
                self._cancel(job_id)
                raise JobCancelled("the job was cancelled")
            try:
                state = job_status(self.endpoint, job_id)
            except requests.HTTPError as exc:
                if time.monotonic() - last_change > self.settings.fanout_stall_s:
                    return self._take_back(segment, f"the endpoint kept failing for segment job {job_id}: {exc}", job_id)
                continue  # a 429 or 5xx: asked again at the next poll
            except (requests.RequestException, RuntimeError) as exc:
                if time.monotonic() - last_change > self.settings.fanout_stall_s:
                    return self._take_back(segment, f"the endpoint did not answer for segment job {job_id}: {exc}", job_id)
                continue
            if state is None:
                return self._take_back(segment, f"segment job {job_id} vanished (404)", job_id)
            now = time.monotonic()
            if state.get("status") != status or state.get("output") != last_report:
                status, last_report, last_change = state.get("status"), state.get("output"), now
            if status == "COMPLETED":
                return state
            if status in ("FAILED", "TIMED_OUT", "CANCELLED"):
                error = state.get("error") or status.lower().replace("_", " ")
                return self._take_back(segment, f"segment job {job_id} {status}: {error}", None, verbatim=error)
            if status == "IN_QUEUE":
                if now - started > self.queue_deadline_s:
                    self.no_free_worker = True
                    why = "FANOUT_QUEUE_DEADLINE_S" + (" and a cold start: WARMUP_SIZE" if self.settings.warmup else "")
                    return self._take_back(segment, f"segment job {job_id} was still queued after "
                                                    f"{self.queue_deadline_s:.0f} s ({why}): no other worker was "
                                                    "free", job_id)
                continue
            report = last_report if isinstance(last_report, dict) else None
            self.job.progress.segment_remote(segment.index, _worker_of(report), report)
            if now - last_change > self.settings.fanout_stall_s:
                return self._take_back(segment, f"segment job {job_id} reported nothing new for "
                                                f"{self.settings.fanout_stall_s:.0f} s (FANOUT_STALL_S): its worker "
                                                "is gone", job_id)
            if now - started > self._execution_s(segment) + self.queue_deadline_s:
                return self._take_back(segment, f"segment job {job_id} ran past its deadline", job_id)

    def _result(self, segment: Segment, state: dict, started: float, job_id: str) -> SegmentResult | None:
        """The segment job's video parts in the job folder, as the stitcher takes a local segment's; whatever the
        answer names in the bucket or on the volume is removed once read, or when the answer is refused."""
        try:
            result = RemoteResult.model_validate((state.get("output") or {}).get(RESULT_KEY))
        except (ValidationError, AttributeError) as exc:
            return self._take_back(segment, f"segment job {job_id} answered what this worker cannot read: {exc}")
        folder = safe_job_id(job_id)
        try:
            if result.index != segment.index:
                raise ValueError(f"it rendered segment {result.index}")
            stem = self.job.work_dir / f"seg{segment.index}_remote"
            parts = {part: self._fetch(info, stem.with_name(f"{stem.name}_{part}{Path(info.name).suffix}"), folder)
                     for part, info in result.parts.items()}
        except (OSError, ValueError, JobFailed, binascii.Error) as exc:
            return self._take_back(segment, f"the video of segment job {job_id} could not be taken: {exc}")
        finally:
            self._discard(result, folder)
        if result.split:
            video = SegmentVideo(parts.get("body"), parts.get("head"), parts.get("tail"), split=True,
                                 stats=parts.get("stats"))
        elif "body" in parts:
            video = SegmentVideo.whole(parts["body"], parts.get("stats"))
        else:
            return self._take_back(segment, f"segment job {job_id} sent no video")
        missing = video.missing_parts(segment.frames, self.plan.overlap_with_previous(segment),
                                      self.plan.overlap_with_next(segment))
        if missing:
            return self._take_back(segment, f"segment job {job_id} sent no {' and '.join(missing)}")
        log.info("segment %d done on worker %s (%s) in %.1f s", segment.index, result.worker, result.instance,
                 time.monotonic() - started)
        return SegmentResult(segment, video, result.instance, result.gpu, time.monotonic() - started,
                             result.comfy_seconds, time.monotonic(), attempts=result.attempts,
                             node_seconds=result.node_seconds, device_settings=result.device_settings,
                             started_at=started, cold=result.cold, worker=result.worker)

    def _fetch(self, part: SegmentPart, dest: Path, folder: str) -> Path:
        """One part of a segment job's video, from the response, the bucket (with this worker's credentials:
        only under segments/<segment job id>/) or the shared volume (only in its folder for that job)."""
        if part.data is not None:
            dest.write_bytes(base64.b64decode(part.data, validate=True))
        elif part.key is not None:
            if part.key != f"segments/{folder}/{part.name}":
                raise ValueError(f"bucket key {part.key!r} is not this segment job's")
            bucket.get_file(part.key, dest, self.settings)
        else:
            source = self._volume_file(part, folder)
            dest.write_bytes(source.read_bytes())
        return dest

    def _volume_file(self, part: SegmentPart, folder: str) -> Path:
        expected = (self.settings.output_volume_dir / "segments" / folder / part.name).resolve()
        if Path(part.path).resolve() != expected:
            raise ValueError(f"{part.path} is not this segment job's file on the shared volume")
        return expected

    def _discard(self, result: RemoteResult, folder: str) -> None:
        """Removes what a segment job's answer left in the bucket or on the volume (read or not)."""
        keys = [p.key for p in result.parts.values() if p.key == f"segments/{folder}/{p.name}"]
        if keys and self.settings.bucket_configured:
            bucket.delete_keys(keys, self.settings)
        for part in result.parts.values():
            if part.path is not None:
                try:
                    path = self._volume_file(part, folder)
                    path.unlink(missing_ok=True)
                    path.parent.rmdir()
                except (OSError, ValueError):
                    pass

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


def job_status(endpoint, job_id: str) -> dict | None:
    """A job's /status body through the runpod SDK's endpoint client (runpod.Endpoint); None for a 404 (no such job
    of the endpoint, or its result has expired); raises where the endpoint fails otherwise or does not answer."""
    try:
        return endpoint.rp_client.get(f"{endpoint.endpoint_id}/status/{job_id}")
    except requests.HTTPError as exc:
        if exc.response is not None and exc.response.status_code == 404:
            return None
        raise


def _worker_of(report: dict | None) -> str:
    """How the parent's progress names a segment job's worker (its RUNPOD_POD_ID, as it reports it)."""
    return f"worker {(report or {}).get('worker') or '?'}"
