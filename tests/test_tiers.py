"""The tiers (tests/support/tiers.py): tests are marked by the fixtures they use, fixtures of fixtures
included, and the watch that guards the fast tier sees a ComfyUI process or an image tool started below
pytest and names the test that was running."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.support.tiers import FAST_TIER, STAND_IN_ENV, ComfyUIWatch, heavy_process
from local_platform.workers import REPO


def collected(*args: str) -> set[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                         cwd=REPO, capture_output=True, text=True, timeout=120).stdout
    return {line.split("::", 1)[1] for line in out.splitlines() if "::" in line}


def test_a_test_is_marked_by_the_fixtures_of_its_fixtures():
    """In test_templates_static.py, `nodes` uses `instance`, which uses `pool`: every test that needs one of them
    is comfy; the one that needs none stays in the fast tier."""
    fast = collected("tests/test_templates_static.py", "-m", FAST_TIER)
    heavy = collected("tests/test_templates_static.py", "-m", "comfy")
    assert fast == {"test_manifest_and_schema_agree_with_the_templates"}
    assert "test_bound_media_must_really_be_uploaded" in heavy  # instance -> pool
    assert "test_broken_template_is_reported" in heavy  # nodes -> instance -> pool
    assert not fast & heavy


def test_the_watch_names_a_comfyui_process_and_the_test_that_started_it():
    watch = ComfyUIWatch(interval_s=0.05, count_stand_ins=True).start()
    watch.current = "tests/test_x.py::test_y"
    # A stand-in with ComfyUI's command line shape (python main.py ... --port N); it only sleeps. STAND_IN_ENV keeps
    # the session's own watch (this test is in the fast tier) from counting it.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)", "main.py", "--port", "1"],
                             env={**os.environ, STAND_IN_ENV: "1"})
    try:
        deadline = time.monotonic() + 2
        while not watch.found and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
        watch.stop()
    # Only our child counts: in a whole run, the session's pools are ComfyUI processes below pytest too.
    ours = [(test, what) for test, what, cmdline in watch.found if "time.sleep(3)" in cmdline]
    assert ours == [("tests/test_x.py::test_y", "a ComfyUI process")]
    assert watch.found_during("tests/test_x.py::test_y") and not watch.found_during("tests/test_x.py::test_z")


def test_what_counts_as_heavy():
    assert heavy_process(["/venv/bin/python", "/x/ComfyUI/main.py", "--listen", "127.0.0.1", "--port", "8188"])
    assert heavy_process(["/usr/bin/buildah", "run", "c"]) == "an image tool (buildah)"
    assert heavy_process(["mmdebstrap", "bookworm"])
    assert heavy_process(["python", "-m", "pytest", "main.py"]) is None  # no server
    assert heavy_process(["ffmpeg", "-i", "x.mp4"]) is None
    assert heavy_process([]) is None


def test_a_light_fixture_named_like_a_heavy_one_gives_no_marker():
    """test_startup.py's `platform` is only the RunPod stand-in; test_client_runpod.py's also starts the worker
    with its ComfyUI instances. Only the latter's tests are comfy."""
    fast = collected("tests/test_startup.py", "tests/test_client_runpod.py", "-m", FAST_TIER)
    assert "test_bad_settings_are_answered_to_every_job_on_runpod" in fast
    assert "test_a_wrong_api_key_is_named" not in fast
