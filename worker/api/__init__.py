"""What handler.py serves with, beyond the runpod SDK: start-up that fails clearly (startup.py: the settings,
the checks and the instances' start, each cause one line, answered to every job while it stands); live jobs
with their progress and cancel events (live_jobs.py), and the local API's /progress and /cancel routes
(local_api.py).

The top of the stack: may import from every layer below; only handler.py imports it.
"""
