"""From segment videos to the answer: the stitch (stitch.py) with its seam blends (seam_blend.py), delivery
as base64, bucket URL or volume path (delivery.py), the response (response.py) and its summary for people
(summary.py).

Imports from every layer below it; nothing above (api, job.py) imports into it backwards.
"""
