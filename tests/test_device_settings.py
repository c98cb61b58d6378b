"""The template's settings follow the GPU an instance runs on: rows by VRAM (measured on an H200 capped at
24, 32 and 48 GiB, docs/PERFORMANCE.md), COMFY_VRAM_LIMIT_GB caps what an instance plans for, and a request
whose GPU fits no row is refused before any work with the numbers."""

from __future__ import annotations

import pytest

from comfy_manager import PoolSettings
from comfy_manager.gpus import GpuInfo
from comfy_manager.instance import ComfyInstance
from comfy_manager.pool import instance_specs
from worker.request.errors import JobInputError
from worker.templates.template import available_templates

IT = "infinitetalk_image_single"


@pytest.mark.parametrize("vram_gb, row, expected", [
    (139.8, "gpu>=38GB", {"compile": True, "block_swap": False, "load_device": "main_device",
                          "quantization": "fp8_e4m3fn_scaled_fast", "attention_mode": "cudnn_fp8"}),
    (47.99, "gpu>=38GB", {"compile": True, "block_swap": False}),
    (39.6, "gpu>=38GB", {"block_swap": False}),  # an A100 40 GB as NVML counts it
    (31.8, "gpu>=28GB", {"block_swap": True, "blocks_to_swap": 15, "load_device": "offload_device",
                         "t5_quantization": "fp8_e4m3fn", "compile": False, "quantization": "fp8_e4m3fn_scaled"}),
    (23.99, "gpu>=20GB", {"block_swap": True, "blocks_to_swap": 25, "tiled_vae": True,
                          "load_device": "offload_device"}),
    (None, "cpu", {"base_precision": "bf16", "vae_precision": "fp32", "compile": False}),
])
def test_each_gpu_size_gets_its_row(vram_gb, row, expected):
    params = available_templates()[IT].params_for(None, vram_gb)
    assert params.device == row and params.preset == "fast"
    assert {name: params.values[name] for name in expected} == expected


def test_the_row_binds_the_nodes_it_names():
    template = available_templates()[IT]
    small = template.bind({}, template.params_for(None, 23.99))
    assert small["14"]["inputs"]["block_swap_args"] == ["31", 0] and small["31"]["inputs"]["blocks_to_swap"] == 25
    assert small["14"]["inputs"]["load_device"] == "offload_device" and "compile_args" not in small["14"]["inputs"]
    assert small["15"]["inputs"]["quantization"] == "fp8_e4m3fn" and small["20"]["inputs"]["tiled_vae"] is True
    big = template.bind({}, template.params_for("full", 139.8))
    assert big["14"]["inputs"]["compile_args"] == ["32", 0] and "block_swap_args" not in big["14"]["inputs"]
    assert "lora" not in big["14"]["inputs"] and big["21"]["inputs"]["steps"] == 40  # full: the LoRA unlinked


def test_a_request_overrides_a_row():
    template = available_templates()[IT]
    params = template.params_for(None, 23.99, {"blocks_to_swap": 10, "compile": True})
    graph = template.bind({}, params)
    assert graph["31"]["inputs"]["blocks_to_swap"] == 10 and graph["14"]["inputs"]["compile_args"] == ["32", 0]


def test_a_gpu_too_small_for_every_row_is_refused_with_the_numbers():
    with pytest.raises(JobInputError, match="cannot run on a GPU with 16 GB of VRAM: it needs a GPU with at least 20 GB"):
        available_templates()[IT].params_for(None, 16.0)


def test_templates_without_rows_run_anywhere():
    params = available_templates()["restyle"].params_for(None, 8.0)
    assert params.device is None and params.preset is None


def test_the_vram_limit_caps_what_instances_plan_for_and_reserves_the_rest():
    gpus = [GpuInfo(0, "NVIDIA H200", 139.8), GpuInfo(1, "NVIDIA H200", 139.8)]
    settings = PoolSettings(vram_limit_gb=24.0)
    specs = instance_specs(settings, gpus)
    assert [s.vram_gb for s in specs] == [24.0, 24.0] and [s.gpu for s in specs] == [0, 1]
    command = ComfyInstance(specs[0], settings.comfy_path, settings.python, []).command()
    assert command[command.index("--reserve-vram") + 1] == "115.8"
    uncapped = instance_specs(PoolSettings(), gpus)
    assert [s.vram_gb for s in uncapped] == [139.8, 139.8]
    assert "--reserve-vram" not in ComfyInstance(uncapped[0], settings.comfy_path, settings.python, []).command()
    cpu = instance_specs(PoolSettings(force_cpu=True, cpu_instances=1, vram_limit_gb=24.0), gpus)
    assert cpu[0].vram_gb is None and cpu[0].gpu is None


def test_a_worker_whose_gpus_fit_no_row_refuses_the_job_before_any_work(settings, media_dir):
    from media_samples.factory import make_image, make_tone
    from worker.job import run_job

    class SmallGpuPool:  # the pool's public face, with one 16 GB GPU instance that is never used
        size = 1
        instances = [type("Instance", (), {"vram_gb": 16.0})()]

        def check_serving(self) -> None:  # in service
            pass

    job = {"workflow": IT, "image": str(make_image(media_dir / "face.png")),
           "audio": str(make_tone(media_dir / "speech.wav", 1.0)), "output": {"destination": "volume"}}
    with pytest.raises(JobInputError, match="workflow: workflow 'infinitetalk_image_single' cannot run on a GPU with 16 GB"):
        run_job(job, SmallGpuPool(), settings)
    assert not settings.job_work_dir.exists() or not any(settings.job_work_dir.iterdir())  # nothing was started
