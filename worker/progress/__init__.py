"""The job's progress (tracker.py): every running segment's ComfyUI reports combined into one percent and
ETA, published about once a second.

Imports only from the layers below (request, templates, planning, media) and comfy_manager's progress events.
"""
