"""What a job asks for and how the worker is set up: the request model (job_request.py), the errors a job
ends with (errors.py), the worker's settings from its environment (settings.py).

The bottom of the stack: imports nothing of worker/ outside this package (comfy_manager's settings base only).
"""
