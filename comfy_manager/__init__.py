"""Runs one ComfyUI process per GPU (or N on the CPU) and speaks ComfyUI's HTTP + websocket protocol."""

from comfy_manager.client import ComfyClient, ComfyError, ComfyOutputFile, PromptRejected
from comfy_manager.gpus import GpuInfo, discover_gpus
from comfy_manager.instance import ComfyInstance, InstanceDied
from comfy_manager.pool import InstancePool
from comfy_manager.settings import PoolSettings

__all__ = [
    "ComfyClient", "ComfyError", "ComfyOutputFile", "PromptRejected",
    "GpuInfo", "discover_gpus", "ComfyInstance", "InstanceDied", "InstancePool", "PoolSettings",
]
