"""RunPod's side of the worker, on this machine, for tests and benchmarks: the RunPod stand-in (its queue and
endpoint API, both sides: runpod_standin.py), the real worker as a process, with its local API or polling
the stand-in as a worker of an endpoint (workers.py), and a real S3-compatible server (s3_server.py).

Nothing here is part of the product; it imports nothing of tests/ (tests/test_structure.py checks it).
"""
