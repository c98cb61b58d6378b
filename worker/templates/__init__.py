"""Workflow templates: an API-format ComfyUI graph plus its bindings (template.py), the slots a segment's
values bind to (slots.py), the frame counts a workflow generates (frame_grid.py) and the model files the
templates need (model_files.py).

Imports only from worker.request.
"""
