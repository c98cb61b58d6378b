"""From segment videos to the answer: the stitch (stitch.py) with its seam blends (seam_blend.py), delivery
as base64, bucket URL or volume path (delivery.py), and the response (response.py); its summary for
people is client/report.py's, shared with the client.

Imports from every layer below it; nothing above (api, job.py) imports into it backwards.
"""
