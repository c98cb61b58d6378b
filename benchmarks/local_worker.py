"""What a worker holds (its CPU ComfyUI instances, settings and job planner) in a folder of a benchmark's
own, so that a benchmark runs jobs through worker.job.run_job as the handler does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from comfy_manager import InstancePool, PoolSettings
from worker.request.settings import WorkerSettings
from worker.job import run_job
from worker.planning.learned import Learned


@dataclass
class LocalWorker:
    pool: InstancePool
    settings: WorkerSettings
    planner: Learned  # one for every job, as a worker has: it learns the stitch lead
    media: Path  # where the benchmark puts its inputs (an allowed input root)

    @classmethod
    def on_cpu(cls, root: Path, base_port: int, instances: int = 2, **pool_settings) -> LocalWorker:
        """Instances (not started), jobs, inputs and the output volume in folders under root; pool_settings:
        other PoolSettings fields (e.g. restart_limit)."""
        media = root / "media"
        media.mkdir()
        settings = WorkerSettings(job_work_dir=root / "jobs", allowed_input_roots=(media.resolve(),),
                                  output_volume_dir=root / "volume")
        settings.job_work_dir.mkdir()
        pool = InstancePool(PoolSettings(instances_dir=root / "instances", base_port=base_port,
                                         cpu_instances=instances, force_cpu=True, **pool_settings))
        return cls(pool, settings, Learned(settings.stitch_lead), media)

    def run(self, job: dict, job_id: str | None = None) -> dict:
        return run_job(job, self.pool, self.settings, job_id, learned=self.planner)
