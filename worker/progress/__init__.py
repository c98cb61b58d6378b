"""The job's progress (tracker.py): every running segment's ComfyUI reports combined into one percent and
ETA, published every PROGRESS_INTERVAL_S (1 s) and at each change of stage or segment state.

Imports only from the layers below (request, templates, planning, media) and comfy_manager's progress events.
"""
