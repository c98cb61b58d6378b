"""The job's media: fetched from where the request points (sources.py), probed (probe.py), decoded and cut
per segment (inputs.py), the audio's loudness per frame (loudness.py), every ffmpeg call with a deadline
(ffmpeg.py), and the video format every segment file shares (segment_format.py).

Imports only from worker.request, worker.templates and worker.planning (a segment's frame range).
"""
