"""A job's live progress: every running segment's ComfyUI reports combined into one figure (stage, percent,
ETA, and per segment its instance, frames, windows and percent), published every PROGRESS_INTERVAL_S (1 s) and
at once when the stage or a segment's state (waiting, running, done) changes.

A segment's own percent comes from ComfyUI's websocket: the nodes it has finished or skipped (cached) and
the steps of the node running now, each node weighted by its share of the ComfyUI time in the worker's
recent jobs of the same kind (LearnedRates, worker/planning/learned.py; every node alike before the first such job).

The ETA: for each running segment, the time it has run extrapolated by its percent, blended with what the
learned rate says the segment needs (the further the segment, the more its own pace counts); before the
worker has learned the kind, never less than what the running node has left at its own pace where it
reports steps (nodes then count alike, which can say far too little); generation ends with the
slowest segment; then the learned stitch tail and delivery. Once the worker has learned jobs of the kind,
percent is elapsed / (elapsed + ETA), so the two agree; before that (the first job of a kind) it is a
figure by stage and the segments' node progress. Percent never goes down, and is 100 only once done.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Literal

from pydantic import BaseModel

from comfy_manager.client import PromptProgress
from worker.planning.estimate import Estimate, windows
from worker.planning.learned import LearnedRates
from worker.planning.segment_plan import Segment, SegmentPlan
from worker.templates.template import WorkflowTemplate

log = logging.getLogger(__name__)

Stage = Literal["preparing", "generating", "stitching", "delivering", "done"]
# cancelled: the job was cancelled before the segment was done (set by the local API once the job has stopped)
SegmentState = Literal["waiting", "running", "done", "cancelled"]
# Percent by stage where no ETA can be made yet: generation spans COARSE_GENERATING.
COARSE = {"preparing": 0.0, "stitching": 92.0, "delivering": 97.0}
COARSE_GENERATING = (2.0, 90.0)
MIN_FRACTION = 0.02  # below this, a segment's own pace says too little to extrapolate from
# The stitch's tail per pixel of the output's frames before the worker has learned it (ffmpeg encoding what
# is left once the last segment is done: about 0.009 s a 256x256 frame on two CPU cores): rough, a start.
ROUGH_TAIL_S_PER_PIXEL = 1.3e-7
LOG_EVERY_S = 10.0  # INFO lines: at each stage and this often in between (every update at DEBUG)


class SegmentProgress(BaseModel):
    index: int
    start_frame: int
    end_frame: int  # exclusive
    frames: int
    windows: int  # what the template samples it in, as the dry run counts them (worker/planning/estimate.py: windows)
    state: SegmentState  # waiting for an instance (or for a retry), running, done, cancelled
    instance: str | None = None  # e.g. gpu1:8189, once it runs
    gpu: int | None = None
    attempt: int = 0  # 1 on the first try
    node: str | None = None  # the node running now, "9 KSampler"
    node_steps: tuple[float, float] | None = None  # (done, of) steps of that node, where it reports them
    percent: float = 0.0


class JobProgress(BaseModel):
    """What the worker reports while a job runs (RunPod's /status `output` while IN_PROGRESS; the local
    API's GET /progress/{id})."""

    stage: Stage
    percent: float  # 0..100, never going down; 100 only when done
    elapsed_s: float
    eta_s: float | None  # seconds left; None while nothing allows an estimate yet
    message: str  # one line for people: "generating: 1/2 segments done, 63%, ETA 12 s"
    frames: int | None = None  # of the result, once planned
    segments: list[SegmentProgress] = []
    worker: str | None = None  # on RunPod, the worker running the job (RUNPOD_POD_ID): a segment job's says where
    # it renders, a parent's lets its segment jobs see that it still runs where it sent them (parent_watch.py)


ProgressSink = Callable[[JobProgress], None]


@dataclass
class _Segment:
    segment: Segment
    windows: int
    state: SegmentState = "waiting"
    instance: str | None = None
    gpu: int | None = None
    attempt: int = 0
    started_at: float | None = None
    weights: dict[str, float] = field(default_factory=dict)  # node id -> weight in the segment's percent
    names: dict[str, str] = field(default_factory=dict)  # node id -> "id ClassType"
    finished: set[str] = field(default_factory=set)  # nodes run or skipped (cached)
    node: str | None = None
    node_started_at: float | None = None
    steps: tuple[float, float] | None = None
    declared_s: float | None = None  # what the template's declared speed says it takes (the first job of a kind)

    remote_fraction: float | None = None  # on another worker: the fraction its segment job reports

    def fraction(self) -> float:
        if self.state == "done":
            return 1.0
        if self.remote_fraction is not None:
            return self.remote_fraction if self.state == "running" else 0.0
        total = sum(self.weights.values())
        if self.state != "running" or total <= 0:
            return 0.0
        done = sum(self.weights.get(node, 0.0) for node in self.finished)
        if self.node is not None and self.node not in self.finished and self.steps and self.steps[1] > 0:
            done += self.weights.get(self.node, 0.0) * min(1.0, self.steps[0] / self.steps[1])
        return min(1.0, done / total)

    def remaining(self, now: float, learned: LearnedRates | None) -> float | None:
        """Seconds until this segment is done, if anything allows a guess (waiting: once it has an instance)."""
        if self.state == "done":
            return 0.0
        expected = learned.generate_s_per_frame * self.segment.frames if learned else self.declared_s
        if self.state == "waiting" or self.started_at is None:
            return expected
        elapsed = now - self.started_at
        fraction = self.fraction()
        own = elapsed * (1 - fraction) / fraction if fraction >= MIN_FRACTION else None
        by_rate = expected - elapsed if expected is not None and expected > elapsed else None
        if own is None and by_rate is None and expected is not None:
            estimate = elapsed  # past what it was expected to take, and too little done to tell: as long again
        elif own is None or by_rate is None:
            estimate = own if by_rate is None else by_rate
        else:
            estimate = fraction * own + (1 - fraction) * by_rate
        # Before the worker has learned this kind of job, its nodes count alike and the segment's percent can
        # say far less than a node that reports steps: the segment needs at least what that node has left.
        node_left = self.node_left(now) if learned is None else None
        if node_left is not None:
            estimate = node_left if estimate is None else max(estimate, node_left)
        return estimate

    def node_left(self, now: float) -> float | None:
        if self.node_started_at is None or not self.steps or self.steps[1] <= 0:
            return None
        done = min(1.0, self.steps[0] / self.steps[1])
        return (now - self.node_started_at) * (1 - done) / done if done >= MIN_FRACTION else None

    def report(self) -> SegmentProgress:
        s = self.segment
        return SegmentProgress(index=s.index, start_frame=s.start, end_frame=s.end, frames=s.frames,
                               windows=self.windows, state=self.state, instance=self.instance, gpu=self.gpu,
                               attempt=self.attempt, node=self.names.get(self.node) if self.node else None,
                               node_steps=self.steps if self.state == "running" else None,
                               percent=round(100 * self.fraction(), 1))


class JobProgressTracker:
    """Holds one job's progress as its steps report it, and publishes it to `sink` from a thread of its own:
    every `interval_s`, and at once when the stage or a segment's state changes. Use as a context manager;
    finish() when done."""

    def __init__(self, sink: ProgressSink | None = None, started: float | None = None, job_id: str = "job",
                 interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic, worker: str | None = None):
        self.sink = sink
        self.worker = worker
        self.job_id = job_id
        self.interval_s = interval_s
        self.clock = clock
        self.started = clock() if started is None else started
        self._lock = threading.Lock()
        self._stage: Stage = "preparing"
        self._stage_started = self.started
        self._segments: list[_Segment] = []
        self._frames: int | None = None
        self._learned: LearnedRates | None = None
        self._pixels = 0
        self._percent = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_logged: tuple[Stage, float] | None = None

    # -- what the job's steps report -----------------------------------------------------------------

    def planned(self, plan: SegmentPlan, template: WorkflowTemplate, learned: LearnedRates | None,
                estimate: Estimate | None = None, pixels: int = 0) -> None:
        """The plan is made. Before the worker has learned the kind (`learned` None), `estimate` (the template's
        declared speed) gives each segment's expected time, and the stitch's tail a rough guess by `pixels` a
        frame, so that the first job of a kind has an ETA too."""
        with self._lock:
            self._frames = plan.total_frames
            self._learned = learned
            self._pixels = pixels
            per_window = estimate.seconds_per_window if estimate is not None and learned is None else None
            self._segments = [_Segment(s, windows(template, s)) for s in plan.segments]
            for seg in self._segments:
                seg.declared_s = per_window * seg.windows if per_window is not None else None

    def stage(self, stage: Stage) -> None:
        with self._lock:
            self._stage, self._stage_started = stage, self.clock()
        self._wake.set()

    def segment_started(self, index: int, instance: str, gpu: int | None, graph: dict) -> None:
        """A try of segment `index` began on `instance`, running `graph` (ComfyUI's API format)."""
        with self._lock:
            seg = self._segment(index)
            names = {node: f"{node} {spec.get('class_type', '?')}" for node, spec in graph.items()}
            shares = self._learned.node_shares if self._learned else {}
            # Learned shares where the worker has them (a node absent from them took no time); else all alike.
            weights = {node: shares.get(name, 0.0) for node, name in names.items()} if shares else {}
            if not any(weights.values()):
                weights = dict.fromkeys(names, 1.0)
            seg.state, seg.instance, seg.gpu, seg.attempt = "running", instance, gpu, seg.attempt + 1
            seg.remote_fraction = None
            seg.started_at, seg.weights, seg.names = self.clock(), weights, names
            seg.finished, seg.node, seg.node_started_at, seg.steps = set(), None, None, None
        self._wake.set()

    def segment_event(self, index: int, event: PromptProgress) -> None:
        """A report from the segment's ComfyUI prompt (comfy_manager.client.PromptProgress)."""
        with self._lock:
            seg = self._segment(index)
            if seg.state != "running":
                return
            if event.kind == "cached":
                seg.finished.update(event.nodes)
            elif event.kind == "executing":
                if seg.node is not None:
                    seg.finished.add(seg.node)
                seg.node, seg.node_started_at, seg.steps = event.node, self.clock(), None
                if event.node is None:
                    seg.finished.update(seg.weights)
            elif event.kind == "progress" and event.node is not None:
                if event.node != seg.node:  # a progress report can precede its node's executing event
                    if seg.node is not None:
                        seg.finished.add(seg.node)
                    seg.node, seg.node_started_at = event.node, self.clock()
                seg.steps = (event.value, event.max)

    def segment_remote(self, index: int, worker: str, report: dict | None) -> None:
        """Segment `index` runs as a segment job on another worker; `report`: that job's latest progress
        (its JobProgress as a dict, None while it is queued there)."""
        with self._lock:
            seg = self._segment(index)
            if seg.state == "done":
                return
            theirs = (report or {}).get("segments") or [{}]
            theirs = theirs if isinstance(theirs, list) and isinstance(theirs[0], dict) else [{}]
            began_running = seg.state != "running"
            if began_running:
                seg.state, seg.attempt, seg.started_at = "running", seg.attempt + 1, self.clock()
                seg.weights, seg.names, seg.finished, seg.node, seg.steps = {}, {}, set(), None, None
            seg.instance = f"{worker} {theirs[0].get('instance') or 'queued'}"
            seg.gpu = theirs[0].get("gpu") if isinstance(theirs[0].get("gpu"), int) else None
            percent = (report or {}).get("percent")
            seg.remote_fraction = min(1.0, max(0.0, percent / 100)) if isinstance(percent, (int, float)) else 0.0
            node, steps = theirs[0].get("node"), theirs[0].get("node_steps")
            node = node if isinstance(node, str) else None
            seg.names = {node: node} if node else {}
            seg.node = node
            seg.steps = tuple(steps) if isinstance(steps, list) and len(steps) == 2 else None
        if began_running:
            self._wake.set()

    def segment_retrying(self, index: int) -> None:
        """The segment's try failed and it waits to run again (its percent starts over)."""
        with self._lock:
            seg = self._segment(index)
            seg.state, seg.started_at, seg.node, seg.steps, seg.finished = "waiting", None, None, None, set()
            seg.remote_fraction = None
        self._wake.set()

    def where(self, index: int) -> str:
        """Where segment `index` is, for the log: `in node 6 SaveSegmentVideo (step 64 of 133), 53% done`,
        `while waiting for an instance`."""
        with self._lock:
            seg = self._segment(index)
            if seg.state != "running":
                return "while waiting for an instance" if seg.state == "waiting" else f"({seg.state})"
            node = seg.names.get(seg.node) if seg.node else None
            steps = f" (step {seg.steps[0]:.0f} of {seg.steps[1]:.0f})" if node and seg.steps else ""
            return (f"in node {node}{steps}, " if node else "") + f"{100 * seg.fraction():.0f}% done"

    def segment_done(self, index: int) -> None:
        with self._lock:
            seg = self._segment(index)
            seg.state, seg.node, seg.steps = "done", None, None
        self._wake.set()

    def _segment(self, index: int) -> _Segment:
        return next(s for s in self._segments if s.segment.index == index)

    # -- the figure ----------------------------------------------------------------------------------

    def snapshot(self) -> JobProgress:
        """The job's progress now (percent clamped so that it never goes down)."""
        with self._lock:
            now = self.clock()
            elapsed = now - self.started
            eta = self._eta(now)
            if self._stage == "done":
                percent = 100.0
            elif eta is not None and self._learned is not None and elapsed + eta > 0:
                percent = min(99.0, 100 * elapsed / (elapsed + eta))
            else:  # the first job of its kind: its ETA is a rough guess, the stage and the nodes say more
                percent = self._coarse_percent()
            self._percent = max(self._percent, percent)
            segments = [s.report() for s in self._segments]
            stage, frames, percent = self._stage, self._frames, round(self._percent, 1)
        eta = None if eta is None else round(eta, 1)
        return JobProgress(stage=stage, percent=percent, elapsed_s=round(elapsed, 1), eta_s=eta,
                           message=_message(stage, percent, eta, segments), frames=frames, segments=segments,
                           worker=self.worker)

    def _eta(self, now: float) -> float | None:
        if self._stage == "done":
            return 0.0
        if not self._segments:
            return None  # not planned yet
        learned, frames = self._learned, self._frames or 0
        # Before the first job of the kind: a rough guess of the stitch's tail by the frames' pixels.
        tail = learned.tail_s_per_frame * frames if learned else ROUGH_TAIL_S_PER_PIXEL * self._pixels * frames
        deliver = learned.deliver_s_per_frame * frames if learned else 0.0
        in_stage = now - self._stage_started
        if self._stage == "delivering":
            return max(0.0, deliver - in_stage)
        if self._stage == "stitching":
            return max(0.0, tail - in_stage) + deliver
        running = [s.remaining(now, learned) for s in self._segments if s.state == "running"]
        if any(r is None for r in running):
            return None
        # Segments waiting for an instance start when the first running one is done, and take what the
        # learned rate says (before anything is learned: as long as the running ones, on average).
        wait = min(running, default=0.0)
        runs = [now - s.started_at + r for s, r in zip((s for s in self._segments if s.state == "running"), running)]
        left = []
        for seg in self._segments:
            r = seg.remaining(now, learned)
            if r is None and seg.state == "waiting" and runs:
                r = sum(runs) / len(runs)
            if r is None:
                return None
            left.append(r + wait if seg.state == "waiting" else r)
        return max(left, default=0.0) + tail + deliver

    def _coarse_percent(self) -> float:
        if self._stage == "generating":
            total = sum(s.segment.frames for s in self._segments) or 1
            done = sum(s.segment.frames * s.fraction() for s in self._segments) / total
            low, high = COARSE_GENERATING
            return low + (high - low) * done
        return COARSE.get(self._stage, 0.0)

    # -- publishing ----------------------------------------------------------------------------------

    def __enter__(self) -> JobProgressTracker:
        self._thread = threading.Thread(target=self._run, name=f"progress-{self.job_id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def finish(self) -> None:
        """The job is done: publish 100% now and stop."""
        self.stage("done")
        self.__exit__()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            stopping = self._stop.is_set()
            if stopping and self._stage != "done":
                return  # failed or cancelled: the job's error says the rest
            self._publish(self.snapshot())
            if stopping:
                return

    def _publish(self, progress: JobProgress) -> None:
        key = (progress.stage, progress.elapsed_s)
        if self._last_logged is None or self._last_logged[0] != progress.stage or \
                progress.elapsed_s - self._last_logged[1] >= LOG_EVERY_S:
            self._last_logged = key
            log.info("job %s progress: %s", self.job_id, progress.message)
        else:
            log.debug("job %s progress: %s", self.job_id, progress.message)
        if self.sink is None:
            return
        try:
            self.sink(progress)
        except Exception:  # the job goes on even if its progress cannot be sent
            log.exception("job %s: progress update failed", self.job_id)


def _message(stage: Stage, percent: float, eta: float | None, segments: list[SegmentProgress]) -> str:
    parts = [stage]
    if stage == "generating" and segments:
        parts.append(f"{sum(s.state == 'done' for s in segments)}/{len(segments)} segments done")
    parts.append(f"{percent:.0f}%")
    if eta is not None and stage != "done":
        parts.append(f"ETA {format_seconds(eta)}")
    return parts[0] + ": " + ", ".join(parts[1:])


def format_seconds(seconds: float) -> str:
    """12 s, 3 min 05 s, 1 h 02 min."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
