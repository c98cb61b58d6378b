"""The worker's own ComfyUI nodes (scripts/install_comfyui.sh links this folder into ComfyUI/custom_nodes).

SaveSegmentVideo  IMAGE batch -> H.264 mp4 in the output folder, fast, every frame kept.
"""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np
import torch

import comfy.model_management
import folder_paths

X264_PRESETS = ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"]
CHUNK_FRAMES = 16  # frames converted to uint8 and moved to the CPU at a time: bounded extra memory
KEYFRAME_SECONDS = 1  # the worker's stitcher seeks into a segment; it decodes from the key frame before


class SaveSegmentVideo:
    """Writes a segment's frames as an H.264 (yuv420p) mp4, one video frame per image, nothing dropped.

    Core SaveVideo encodes with libx264's default preset (medium), which costs seconds per segment; a
    segment is re-encoded when the worker stitches anyway, so a fast preset and a low CRF lose nothing.
    Frames become uint8 on the GPU (when there is one) before they reach the encoder.
    """

    CATEGORY = "image/video"
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE",),
            "fps": ("FLOAT", {"default": 25.0, "min": 0.01, "max": 1000.0, "step": 0.01}),
            "filename_prefix": ("STRING", {"default": "segment"}),
            "crf": ("INT", {"default": 12, "min": 0, "max": 51}),
            "preset": (X264_PRESETS, {"default": "ultrafast"}),
        }}

    def save(self, images, fps, filename_prefix, crf, preset):
        count, height, width = images.shape[0], images.shape[1], images.shape[2]
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), width, height)
        file = f"{name}_{counter:05}_.mp4"
        rate = Fraction(round(fps * 1000), 1000)
        # Decoded frames usually sit in CPU RAM as float32; converting them on the GPU moves a quarter
        # of the bytes back and keeps the CPU (shared by every instance of the machine) free.
        device = comfy.model_management.get_torch_device()
        # yuv420p needs even sides: an odd one gets its last row/column repeated.
        pad_h, pad_w = height % 2, width % 2
        with av.open(os.path.join(folder, file), mode="w") as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height = width + pad_w, height + pad_h
            stream.pix_fmt = "yuv420p"
            stream.codec_context.time_base = 1 / rate
            stream.options = {"crf": str(crf), "preset": preset}
            stream.codec_context.thread_count = 0  # x264 picks its own thread count (libavcodec's default is 1)
            stream.codec_context.gop_size = max(1, round(fps * KEYFRAME_SECONDS))
            for first in range(0, count, CHUNK_FRAMES):
                chunk = images[first:first + CHUNK_FRAMES].to(device, non_blocking=True)
                chunk = (chunk[..., :3] * 255.0).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
                if pad_h or pad_w:
                    chunk = np.pad(chunk, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
                for offset, pixels in enumerate(chunk):
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
                    frame.pts = first + offset
                    container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        result = {"filename": file, "subfolder": subfolder, "type": "output"}
        return {"ui": {"images": [result], "animated": (True,)}}


NODE_CLASS_MAPPINGS = {"SaveSegmentVideo": SaveSegmentVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"SaveSegmentVideo": "Save segment video (fast H.264)"}
