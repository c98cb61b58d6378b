"""How a job is cut and what it will cost, with no I/O: plan_job() in plan.py is the one entry point
(segments over lanes, the memory cap, seam placement, the estimate for 1..N lanes); segment_plan.py splits
frames, memory.py sizes segments to the instances' memory, seam_placement.py moves seams into pauses,
estimate.py turns a plan into seconds, learned.py keeps what finished jobs taught.

Imports only from worker.request and worker.templates.
"""
