"""Runs one ComfyUI process per GPU (or N on the CPU), keeps them healthy, and speaks ComfyUI's HTTP +
websocket protocol."""

from comfy_manager.cancel import CancelEvent
from comfy_manager.client import (ComfyClient, ComfyError, ComfyOutputFile, ConnectionLost, InstanceFault,
                                  PromptRejected, RequestRefused)
from comfy_manager.gpus import GpuInfo, discover_gpus
from comfy_manager.instance import ComfyInstance, InstanceDied
from comfy_manager.pool import AcquireCancelled, Health, InstancePool, NoInstanceLeft
from comfy_manager.settings import PoolSettings

__all__ = [
    "CancelEvent", "ComfyClient", "ComfyError", "ComfyOutputFile", "ConnectionLost", "InstanceFault",
    "PromptRejected", "RequestRefused", "GpuInfo", "discover_gpus", "ComfyInstance", "InstanceDied",
    "AcquireCancelled", "Health", "InstancePool", "NoInstanceLeft", "PoolSettings",
]
