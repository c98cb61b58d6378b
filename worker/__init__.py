"""The worker: one job, request to response, in stage packages that follow the pipeline.

    request -> templates -> planning -> media -> progress -> render -> output -> api
                                                                   job.py (run_job) ties them together

LAYERS lists them from the bottom up: a package imports only from those before it (tests/test_structure.py
checks it, with no import cycles). What each owns:
- request: what a job asks for (JobRequest), its errors, the worker's settings.
- templates: workflow templates (graph + bindings), their slots, frame grid and model files.
- planning: the one planning entry point (plan_job): segments over lanes, memory caps, seam placement,
  estimates; and what finished jobs taught (Learned).
- media: fetching, probing and cutting the job's media with ffmpeg; the audio's loudness.
- progress: the job's progress, combined from every segment's reports.
- render: each segment's workflow on a ComfyUI instance, its inputs bound into the graph, its video taken.
- output: stitching the segment videos, seam blends, delivery, the response and its summary.
- api: what the local API adds (live jobs, progress and cancel routes).
"""

LAYERS = ["request", "templates", "planning", "media", "progress", "render", "output", "api"]
