"""Each segment's workflow on a ComfyUI instance: its values bound into the template (slot_values.py), run,
retried elsewhere when the instance fails it, and its video taken into the job folder (segments.py,
segment_video.py).

Imports from the layers below it (request, templates, planning, media, progress) and comfy_manager.
"""
