"""Client of the ComfyUI multi-GPU video worker: files in, video out, with live progress (README: "The client").

Needs only `requests` (and `boto3` to upload big media to a bucket); it does not import the worker.
"""

__version__ = "0.1.0"
