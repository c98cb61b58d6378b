"""What the local API adds to the runpod SDK's: live jobs with their progress and cancel events
(live_jobs.py), and the /progress and /cancel routes (local_api.py).

The top of the stack: may import from every layer below; only handler.py imports it.
"""
