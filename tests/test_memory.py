"""Memory planning (issue 16): segment lengths from each instance's memory budget, more segments than instances
when one would not fit, a job that cannot fit refused up front with the numbers; the cost per frame learned
from the instances' measured memory. Fast tests of the planning logic, and jobs on the real CPU instances."""

from __future__ import annotations


import subprocess
import sys
import time
from dataclasses import dataclass
from types import SimpleNamespace

import psutil
import pytest

from media_samples.factory import make_index_video, make_tone, read_indices
from worker.request.settings import MB
from worker.request.errors import JobInputError
from worker.job import run_job
from worker.planning.learned import Learned
from worker.planning.plan import Lane, local_lanes, plan_job
from worker.planning.memory import (GB, FrameCost, Footprints, InstanceBudget, PeakMemory, SegmentMemory, anonymous_rss,
                           available_ram, frames_that_fit, instance_budgets)
from worker.planning.segment_plan import Segment
from worker.request.job_request import parse_request
from worker.templates.template import available_templates

RESTYLE = available_templates()["restyle"]
FRAME = 72 * 512 * 512  # restyle's declared RAM per 512x512 frame (workflows/restyle.bindings.json)


def request(**extra):
    return parse_request({"workflow": "restyle", "input_type": "video", "video": "x", "audio": "y", **extra})


def cpu(name: str, ram_mb: float) -> InstanceBudget:
    return InstanceBudget(name, int(ram_mb * MB), None, int(ram_mb * MB))


def plan(job, frames: int, budgets: list[InstanceBudget] | None = None):
    """The plan of a restyle job on two instances (with these memory budgets, else none known)."""
    lanes = local_lanes(budgets) if budgets else [Lane("cpu0:8188"), Lane("cpu1:8189")]
    return plan_job(job, RESTYLE, frames, lanes, Learned()).segments


def test_segments_are_capped_to_what_fits_so_a_long_job_gets_more_segments_than_instances():
    budgets = [cpu("cpu0:8188", 8000), cpu("cpu1:8189", 6000)]  # 6000 MB / 18 MB a frame: 333 frames
    planned = plan(request(), 1500, budgets)
    fits = int(6000 * MB // FRAME)
    assert max(s.frames for s in planned.segments) <= fits < 1500 // 2
    assert len(planned.segments) == 5  # ceil((1500 - 8) / (333 - 8))
    assert planned.segments[0].start == 0 and planned.segments[-1].end == 1500
    # a short job, or no known cost, is not touched
    assert len(plan(request(), 300, budgets).segments) == 2


def test_the_tightest_instance_and_memory_set_the_cap_fixed_parts_taken_off():
    cost = FrameCost(ram_bytes=10 * MB, vram_bytes=100 * MB, ram_fixed_bytes=500 * MB, vram_fixed_bytes=20 * GB)
    budgets = [InstanceBudget("gpu0:8188", 4 * GB, 80 * GB, 5 * GB), InstanceBudget("gpu1:8189", 3 * GB, 80 * GB, 4 * GB)]
    limit = frames_that_fit(cost, budgets)
    assert (limit.instance, limit.memory, limit.frames) == ("gpu1:8189", "RAM", (3 * 1024 - 500) // 10)
    tight_vram = [InstanceBudget("gpu0:8188", 40 * GB, 24 * GB, 41 * GB)]
    assert frames_that_fit(cost, tight_vram).memory == "VRAM"
    assert frames_that_fit(cost, tight_vram).frames == 4 * 1024 // 100
    assert frames_that_fit(FrameCost(0.0), budgets) is None


def test_a_job_that_cannot_fit_is_refused_with_the_numbers():
    with pytest.raises(JobInputError) as refused:
        plan(request(), 1500, [cpu("cpu0:8188", 300), cpu("cpu1:8189", 250)])
    message = str(refused.value)
    assert message.startswith("width: a 512x512 frame of workflow 'restyle' costs an instance about 18 MB of RAM "
                              "(declared by the template); cpu1:8189 has 250 MB of RAM for frames"), message
    assert "so a segment could hold 13 frames, fewer than the 17 this job's segments need (overlap 8)" in message
    assert "MEMORY_RESERVE_MB" in message


def test_the_cost_learned_from_a_job_replaces_the_declared_one():
    planner = Learned()
    job = request(width=256, height=256)
    assert planner.frame_cost(job, RESTYLE).ram_bytes == 72 * 256 * 256

    def learn(peak_mb: float) -> None:
        results = [SimpleNamespace(segment=Segment(i, 0, 100), comfy_seconds=10.0, cold=False,
                                   memory=SegmentMemory(4242 + i, int(peak_mb * MB), 700 * MB)) for i in range(2)]
        planner.learn(job, RESTYLE, results, SimpleNamespace(busy_seconds=1.0, frames=190))

    planner.footprints.see(4242, 500 * MB)
    planner.footprints.see(4243, 500 * MB)
    learn(1500)  # (1500 - 500 MB idle footprint) / 100 frames
    cost = planner.frame_cost(job, RESTYLE)
    assert (cost.ram_bytes, cost.source) == (10 * MB, "measured on recent jobs")
    learn(2500)
    assert planner.frame_cost(job, RESTYLE).ram_bytes == 20 * MB  # a rise counts at once
    learn(1500)
    assert planner.frame_cost(job, RESTYLE).ram_bytes == 15 * MB  # a fall is smoothed in
    assert planner.frame_cost(request(), RESTYLE).source == "declared by the template"  # another size


def test_a_cold_instance_teaches_no_frame_cost_and_its_footprint_then_includes_its_models():
    """A GPU instance's first prompt loads its models into RAM (about 30 GB at InfiniteTalk's full size): that
    peak is no frame's cost (it capped a 1-GPU InfiniteTalk job on an H200 to segments of at most 297
    frames), and what the instance holds afterwards is its footprint, not memory a budget may hand out.
    Its time is not the frames' either, where warm segments ran too."""
    planner = Learned()
    job = request(width=256, height=256)
    gone = 2**22 + 12345  # a pid no process has (above the kernel's pid_max): its readings are 0, the stored ones count
    cold_instance = SimpleNamespace(process=SimpleNamespace(pid=gone), warm=False, vram_gb=None, name="gpu0")
    before = planner.memory_budgets([cold_instance], 0, 100 * GB)[0]

    def result(peak_mb: float, least_mb: float, cold: bool, seconds: float) -> SimpleNamespace:
        return SimpleNamespace(segment=Segment(0, 0, 100), comfy_seconds=seconds, cold=cold, node_seconds={},
                               memory=SegmentMemory(4242, int(peak_mb * MB), int(least_mb * MB)))

    done = SimpleNamespace(busy_seconds=1.0, frames=100)
    planner.learn(job, RESTYLE, [result(31_000, 1000, cold=True, seconds=100.0)], done)
    assert planner.frame_cost(job, RESTYLE).source == "declared by the template"
    assert planner.learned_s_per_frame(job, RESTYLE) == 1.0  # only cold segments: what there is
    planner.learn(job, RESTYLE, [result(32_000, 30_000, cold=False, seconds=20.0),
                                 result(31_000, 1000, cold=True, seconds=100.0)], done)
    # warm: (32,000 - 30,000 MB held with the models) / 100 frames; the cold one is left out
    assert planner.frame_cost(job, RESTYLE).ram_bytes == 20 * MB
    assert planner.learned_s_per_frame(job, RESTYLE) == pytest.approx(0.5 * 0.2 + 0.5 * 1.0)
    # the warm footprint is kept apart from the cold one: a budget reads it once the instance is warm
    warm_instance = SimpleNamespace(**{**vars(cold_instance), "warm": True})
    planner.footprints.see(gone, 10 * GB, warm=True)
    after = planner.memory_budgets([warm_instance], 0, 100 * GB)[0]
    assert before.ram_bytes - after.ram_bytes > 9 * GB


def test_a_max_segment_frames_without_room_for_two_overlaps_is_refused_not_planned_forever():
    with pytest.raises(JobInputError, match="max_segment_frames: must be more than twice the overlap"):
        plan(request(max_segment_frames=16), 100)
    # 15 frames in segments of at most 10 overlapping by 8: a middle segment would be needed, with no room
    with pytest.raises(JobInputError, match="max_segment_frames: must be more than twice the overlap"):
        plan(request(max_segment_frames=10), 15)
    # 12 frames: two segments, 0-10 and 2-12, each with one overlap
    planned = plan(request(max_segment_frames=10), 12)
    assert [(s.start, s.end) for s in planned.segments] == [(0, 10), (2, 12)]


# -- measuring real processes ------------------------------------------------------------------------------

ALLOCATE = "import time; time.sleep(0.5); block = b'x' * (300 * 1024 * 1024); time.sleep(1.0)"


def test_peak_memory_sees_what_a_process_allocates_and_its_least():
    child = subprocess.Popen([sys.executable, "-c", ALLOCATE])
    try:
        with PeakMemory(child.pid) as memory:
            child.wait(timeout=30)
    finally:
        child.kill()
    assert memory.peak - memory.least >= 280 * MB
    assert memory.least < 100 * MB


def test_instance_budgets_share_the_budget_less_each_idle_footprint():
    children = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) for _ in range(2)]
    try:
        time.sleep(0.5)
        instances = [SimpleNamespace(name=f"cpu{i}", process=child, vram_gb=None, warm=True) for i, child in enumerate(children)]
        instances[1].vram_gb = 24.0
        footprints = Footprints()
        budgets = instance_budgets(instances, footprints, reserve_bytes=0, budget_bytes=4 * GB)
        for child, budget in zip(children, budgets):
            footprint = anonymous_rss(child.pid)
            assert 0 < footprint < 50 * MB
            assert abs(budget.ram_bytes - (2 * GB - footprint)) < 5 * MB and budget.share_bytes == 2 * GB
        assert [b.vram_bytes for b in budgets] == [None, 24 * GB]
        # with no fixed budget: what is available now, less the reserve
        free = instance_budgets(instances, footprints, reserve_bytes=1 * GB)
        assert 0 < free[0].share_bytes <= psutil.virtual_memory().total // 2
    finally:
        for child in children:
            child.kill()


def test_available_ram_is_at_most_what_the_kernel_says():
    assert 0 < available_ram() <= psutil.virtual_memory().available + 10 * MB


# -- jobs on the real instances ---------------------------------------------------------------------------------

@dataclass
class Footprint:
    most: int  # the larger idle footprint of the two instances


def footprint_now(pool, planner: Learned) -> Footprint:
    budgets = planner.memory_budgets(pool.instances, 0, 2 * 64 * GB)  # records the footprints
    return Footprint(max(64 * GB - b.ram_bytes for b in budgets))


def restyle_job(media_dir, frames: int) -> dict:
    video = make_index_video(media_dir / f"mem_{frames}.mp4", frames, 25)
    audio = make_tone(media_dir / f"mem_{frames}.wav", frames / 25)
    return {"workflow": "restyle", "input_type": "video", "video": str(video), "audio": str(audio), "width": 128,
            "height": 64, "output": {"destination": "volume"}}


def test_a_job_too_long_for_the_instances_memory_runs_in_more_segments_than_instances(pool, settings, media_dir):
    planner = Learned()
    per_frame = 72 * 128 * 64
    room = footprint_now(pool, planner).most + 60 * per_frame  # about 60 frames on the fuller instance
    tight = settings.model_copy(update={"memory_budget_mb": 2 * room / MB})
    output = run_job(restyle_job(media_dir, 200), pool, tight, learned=planner)
    fits = min(b.ram_bytes for b in planner.memory_budgets(pool.instances, 0, 2 * room)) // per_frame
    assert output["segments_processed"] > pool.size  # more segments than instances
    assert max(s["frames"] for s in output["segments"]) <= fits
    assert read_indices(output["video_path"]) == list(range(200))
    assert all(s["ram_peak_mb"] > 0 for s in output["segments"])
    # the instances' measured memory now sizes the next job of this kind
    assert planner.frame_cost(parse_request(restyle_job(media_dir, 200)), RESTYLE).source == "measured on recent jobs"


def test_a_job_whose_shortest_segment_cannot_fit_is_refused_before_any_work(pool, settings, media_dir):
    planner = Learned()
    room = footprint_now(pool, planner).most + 5 * 72 * 128 * 64  # 5 frames; segments need 17
    tight = settings.model_copy(update={"memory_budget_mb": 2 * room / MB})
    with pytest.raises(JobInputError, match=r"^width: a 128x64 frame of workflow 'restyle' costs an instance about "
                                            r"1 MB of RAM \(declared by the template\); cpu\d*:\d+ has \d+ MB of RAM "
                                            r"for frames .*so a segment could hold \d frames, fewer than the 17"):
        run_job(restyle_job(media_dir, 200), pool, tight, learned=planner)
    assert list(settings.job_work_dir.iterdir()) == []
