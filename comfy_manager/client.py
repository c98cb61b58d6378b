"""ComfyUI's HTTP + websocket protocol: upload, queue a prompt, follow it, collect its output files.

Every wait has a deadline. Completion is read from the websocket (`executing` with `node: null`) and
confirmed from `/history`; if the socket drops, the client falls back to polling `/history`.

Every failure is a ComfyError of one of three kinds, so that the caller knows what to do with it:
InstanceFault (the instance misbehaved: unreachable, a dropped connection, a 5xx, an answer that is not
JSON; try the work on another instance and restart this one), RequestRefused (ComfyUI refused what was
sent: a 4xx; the message says what to change), and the prompt's own outcomes (PromptFailed: a node raised;
PromptTimedOut; PromptCancelled).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import requests
import websocket

log = logging.getLogger(__name__)


class ComfyError(RuntimeError):
    """ComfyUI refused or failed a prompt, or could not be reached."""


class InstanceFault(ComfyError):
    """The instance misbehaved (a 5xx, a broken answer): the work may succeed on another instance, and this
    one should be restarted."""


class ConnectionLost(InstanceFault):
    """The instance stopped answering (killed, crashed, or restarted and forgot the prompt)."""


class RequestRefused(ComfyError):
    """ComfyUI refused what it was sent (a 4xx answer); the message says what to change. Another instance
    would refuse it too."""


class PromptRejected(RequestRefused):
    """POST /prompt answered 400: the graph did not validate (the message lists node_errors)."""


class PromptFailed(ComfyError):
    """A node raised while the prompt ran (websocket `execution_error`)."""


class PromptTimedOut(ComfyError):
    """The prompt did not finish before its deadline."""


class PromptCancelled(ComfyError):
    """The caller asked to stop; the prompt was interrupted and removed from the queue."""


@dataclass(frozen=True)
class ComfyOutputFile:
    node_id: str
    kind: str  # the history key it came under: images, gifs, audio, ...
    filename: str
    subfolder: str
    type: str  # output | temp


@dataclass(frozen=True)
class PromptProgress:
    """One report of a running prompt from ComfyUI's websocket: a node began (`executing`; node None: the
    prompt ended), a node made progress (`progress`: value of max steps, e.g. sampler steps), or ComfyUI
    will skip nodes whose outputs it has cached (`cached`: their ids in `nodes`)."""

    kind: Literal["executing", "progress", "cached"]
    node: str | None = None
    value: float = 0.0
    max: float = 0.0
    nodes: tuple[str, ...] = ()


ProgressCallback = Callable[[PromptProgress], None]


@dataclass(frozen=True)
class PromptResult:
    prompt_id: str
    outputs: list[ComfyOutputFile]
    seconds: float
    node_seconds: dict[str, float] = field(default_factory=dict)  # node id -> seconds it ran (from the websocket)


def describe_node_errors(body: dict) -> str:
    """Turns a 400 body from POST /prompt into one readable paragraph."""
    parts = []
    error = body.get("error") or {}
    if isinstance(error, dict) and error.get("message"):
        parts.append(error["message"] + (f": {error['details']}" if error.get("details") else ""))
    for node_id, node_error in (body.get("node_errors") or {}).items():
        for item in node_error.get("errors", []):
            detail = item.get("details") or item.get("message", "")
            parts.append(f"node {node_id} ({node_error.get('class_type', '?')}): {detail}")
    return "; ".join(parts) or json.dumps(body)[:500]


def collect_output_files(history_entry: dict) -> list[ComfyOutputFile]:
    """Every file any output node reported, whatever key it used (images, gifs, audio, video...)."""
    files = []
    for node_id, node_outputs in (history_entry.get("outputs") or {}).items():
        for kind, items in node_outputs.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and item.get("filename"):
                    files.append(ComfyOutputFile(node_id, kind, item["filename"],
                                                 item.get("subfolder", ""), item.get("type", "output")))
    return files


class ComfyClient:
    """Talks to one ComfyUI instance at base_url (http://127.0.0.1:PORT)."""

    def __init__(self, base_url: str, http_timeout_s: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.ws_url = "ws" + self.base_url[len("http"):] + "/ws"
        self.http_timeout_s = http_timeout_s
        self.client_id = uuid.uuid4().hex

    def upload(self, path: Path, name: str) -> str:
        """Uploads a file (image, video or audio) to the instance's input folder; returns its name there."""
        with open(path, "rb") as f:
            response = self._http("post", "/upload/image", check=False, files={"image": (name, f)},
                                  data={"type": "input", "overwrite": "true"})
        if response.status_code == 413:
            raise RequestRefused(
                f"ComfyUI refused the upload of {name} ({path.stat().st_size / 2**20:.1f} MB) as too large: its "
                "limit is --max-upload-size (100 MB unless set); raise it through COMFY_EXTRA_ARGS "
                "(e.g. --max-upload-size 2048), or send a smaller input")
        _raise_for_status("POST", "/upload/image", response, f"the upload of {name}")
        stored = _json(response, "POST /upload/image")
        if not isinstance(stored, dict) or "name" not in stored:
            raise InstanceFault(f"POST /upload/image answered without a file name: {response.text[:300]}")
        return f"{stored['subfolder']}/{stored['name']}" if stored.get("subfolder") else stored["name"]

    def run_prompt(self, graph: dict, timeout_s: float, is_alive: Callable[[], bool] | None = None,
                   should_stop: Callable[[], bool] | None = None,
                   on_progress: ProgressCallback | None = None) -> PromptResult:
        """Queues graph, follows it to the end and returns its output files.

        is_alive: False when the instance's process is gone (fail fast instead of waiting).
        should_stop: True when the caller cancels; the prompt is then interrupted and dequeued.
        on_progress: gets the prompt's websocket reports as they arrive (none while following /history).
        On a timeout the prompt is interrupted too, so the instance is free for the next one.
        """
        started = time.monotonic()
        deadline = started + timeout_s
        ws = self._connect_ws()
        prompt_id = None
        watch = _Watch(deadline, is_alive, should_stop, on_progress)
        starts: list[tuple[str | None, float]] = []  # (node id, when it began executing; None: the end)
        try:
            prompt_id = self.queue_prompt(graph)
            self._follow(ws, prompt_id, watch, starts)
            entry = self._history_entry(prompt_id, watch)
        except (PromptTimedOut, PromptCancelled):
            if prompt_id is not None:
                self.cancel(prompt_id)
            raise
        finally:
            if ws is not None:
                _close_quietly(ws)
        return PromptResult(prompt_id, collect_output_files(entry), time.monotonic() - started,
                            _node_seconds(starts))

    def cancel(self, prompt_id: str) -> None:
        """Removes the prompt from the queue if pending and interrupts it if running."""
        try:
            self._http("post", "/queue", json={"delete": [prompt_id]})
            self._http("post", "/interrupt", json={"prompt_id": prompt_id})
        except ComfyError as exc:
            log.warning("could not cancel prompt %s: %s", prompt_id, exc)

    def queue_prompt(self, graph: dict) -> str:
        response = self._http("post", "/prompt", json={"prompt": graph, "client_id": self.client_id},
                              check=False)
        if response.status_code == 400:
            try:
                body = response.json()
            except ValueError:
                body = {"error": {"message": response.text[:500]}}
            raise PromptRejected(describe_node_errors(body if isinstance(body, dict) else {"error": body}))
        _raise_for_status("POST", "/prompt", response, "the workflow")
        answer = _json(response, "POST /prompt")
        if not isinstance(answer, dict) or "prompt_id" not in answer:
            raise InstanceFault(f"POST /prompt answered without a prompt_id: {response.text[:300]}")
        return answer["prompt_id"]

    def download(self, output: ComfyOutputFile, dest: Path) -> Path:
        """Fetches an output file over HTTP into dest. A network failure or a bad answer is the instance's
        fault (InstanceFault); a failure to write dest is an OSError of this machine's."""
        params = {"filename": output.filename, "subfolder": output.subfolder, "type": output.type}
        what = f"GET /view ({output.filename})"
        with open(dest, "wb") as f:
            try:
                response = requests.get(f"{self.base_url}/view", params=params, stream=True,
                                        timeout=self.http_timeout_s)
            except (requests.RequestException, OSError) as exc:
                raise ConnectionLost(f"{what} failed: {exc}") from exc
            with response:
                if response.status_code == 404:  # it reported the file, then cannot serve it
                    raise InstanceFault(f"{what} answered 404: the output it reported is not there")
                _raise_for_status("GET", "/view", response, f"the download of {output.filename}")
                chunks = response.iter_content(chunk_size=1 << 20)
                while True:
                    try:
                        chunk = next(chunks, None)
                    except (requests.RequestException, OSError) as exc:
                        raise ConnectionLost(f"{what} broke off: {exc}") from exc
                    if chunk is None:
                        break
                    f.write(chunk)
        return dest

    # -- internals -------------------------------------------------------------------------------

    def _http(self, method: str, path: str, check: bool = True, **kwargs) -> requests.Response:
        """One request. Not getting an answer (refused, reset, timed out: any socket error) is
        ConnectionLost; with check, an error status is classified by _raise_for_status."""
        try:
            response = requests.request(method, self.base_url + path, timeout=self.http_timeout_s, **kwargs)
        except (requests.RequestException, OSError) as exc:
            raise ConnectionLost(f"{method.upper()} {path} failed: {exc}") from exc
        if check:
            _raise_for_status(method.upper(), path, response, f"{method.upper()} {path}")
        return response

    def _get_json(self, path: str) -> dict:
        answer = _json(self._http("get", path), f"GET {path}")
        if not isinstance(answer, dict):
            raise InstanceFault(f"GET {path} answered {type(answer).__name__}, not a JSON object")
        return answer

    def _connect_ws(self) -> websocket.WebSocket | None:
        try:
            return websocket.create_connection(f"{self.ws_url}?clientId={self.client_id}", timeout=10)
        except (OSError, websocket.WebSocketException) as exc:
            log.warning("websocket to %s failed (%s); following the prompt through /history", self.ws_url, exc)
            return None

    def _follow(self, ws, prompt_id: str, watch: "_Watch", starts: list[tuple[str | None, float]]) -> None:
        """Reads events until our prompt ends, noting when each node starts in `starts`; falls back to
        /history polling if the socket drops."""
        last_poll = time.monotonic()
        while ws is not None:
            watch.check(prompt_id)
            ws.settimeout(max(0.1, min(1.0, watch.deadline - time.monotonic())))
            try:
                message = ws.recv()
            except websocket.WebSocketTimeoutException:
                if time.monotonic() - last_poll > 10:
                    last_poll = time.monotonic()
                    if self._is_finished(prompt_id):
                        # /history can be written just before the end event arrives; the last node ends now.
                        starts.append((None, time.monotonic()))
                        return
                continue
            except (OSError, websocket.WebSocketException) as exc:
                log.warning("websocket closed while following %s (%s); polling /history", prompt_id, exc)
                break
            if not isinstance(message, str):
                continue  # binary preview frames
            try:
                event = json.loads(message)
            except ValueError:
                event = None
            data = (event.get("data") or {}) if isinstance(event, dict) else None
            if not isinstance(data, dict):
                log.warning("ignoring a websocket message that is not a JSON event: %.200s", message)
                continue
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            kind = event.get("type")
            if kind == "executing" and data.get("prompt_id") == prompt_id:
                starts.append((data.get("node"), time.monotonic()))
                watch.report(PromptProgress("executing", data.get("node")))
                if data.get("node") is None:
                    return
            elif kind == "progress":
                watch.report(PromptProgress("progress", _node_id(data.get("node")), float(data.get("value") or 0),
                                            float(data.get("max") or 0)))
            elif kind == "execution_cached" and data.get("prompt_id") == prompt_id:
                watch.report(PromptProgress("cached", nodes=tuple(str(n) for n in data.get("nodes") or ())))
            elif kind == "execution_error":
                raise PromptFailed(
                    f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                    f"{data.get('exception_type', '')}: {data.get('exception_message', '').strip()}")
            elif kind == "execution_interrupted":
                raise PromptFailed(f"prompt {prompt_id} was interrupted")
        while not self._is_finished(prompt_id):
            watch.check(prompt_id)
            time.sleep(0.5)
        starts.append((None, time.monotonic()))  # the socket closed: the last node's end, to within the polling

    def _is_finished(self, prompt_id: str) -> bool:
        """True when /history holds the prompt; raises if it is neither there nor queued."""
        history = self._get_json(f"/history/{prompt_id}")
        if prompt_id in history:
            return True
        queue = self._get_json("/queue")
        queued = [item[1] for key in ("queue_running", "queue_pending") for item in queue.get(key, [])]
        if prompt_id not in queued:
            # A restarted instance forgets its queue and history.
            raise ConnectionLost(f"prompt {prompt_id} is neither queued nor in the history")
        return False

    def _history_entry(self, prompt_id: str, watch: "_Watch") -> dict:
        # /history can be written a moment after the last websocket event.
        while True:
            entry = self._get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry is not None:
                status = entry.get("status") or {}
                if status.get("status_str") == "error":
                    raise PromptFailed(_history_error(status))
                return entry
            watch.check(prompt_id)
            time.sleep(0.1)


def _node_seconds(starts: list[tuple[str | None, float]]) -> dict[str, float]:
    """Each node's run time: from its `executing` event to the next one (the last to the end event)."""
    seconds: dict[str, float] = {}
    for (node, began), (_, ended) in zip(starts, starts[1:]):
        if node is not None:
            seconds[node] = round(seconds.get(node, 0.0) + ended - began, 3)
    return seconds


def _node_id(node) -> str | None:
    return None if node is None else str(node)


@dataclass(frozen=True)
class _Watch:
    """What ends a wait early: the deadline, a dead process, or the caller cancelling; and who hears of the
    prompt's progress."""

    deadline: float
    is_alive: Callable[[], bool] | None
    should_stop: Callable[[], bool] | None
    on_progress: ProgressCallback | None = None

    def report(self, progress: PromptProgress) -> None:
        if self.on_progress is None:
            return
        try:
            self.on_progress(progress)
        except Exception:  # a listener's bug must not fail the prompt
            log.exception("progress listener failed on %s", progress)

    def check(self, prompt_id: str) -> None:
        if self.should_stop is not None and self.should_stop():
            raise PromptCancelled(f"prompt {prompt_id} was cancelled")
        if self.is_alive is not None and not self.is_alive():
            raise ConnectionLost("the ComfyUI process exited while running the prompt")
        if time.monotonic() > self.deadline:
            raise PromptTimedOut(f"prompt {prompt_id} did not finish before its deadline")


def _raise_for_status(method: str, path: str, response: requests.Response, what: str) -> None:
    """A 5xx is the instance's fault (InstanceFault); another error status means ComfyUI refused `what`
    as sent (RequestRefused)."""
    if response.ok:
        return
    answer = f"{method} {path} answered {response.status_code} {response.reason}: {response.text[:300]}"
    if response.status_code >= 500:
        raise InstanceFault(answer)
    if response.status_code == 413:
        raise RequestRefused(f"{what} is larger than ComfyUI accepts ({answer}); its limit is --max-upload-size "
                             "(100 MB unless set): raise it through COMFY_EXTRA_ARGS")
    raise RequestRefused(f"ComfyUI refused {what} ({answer})")


def _json(response: requests.Response, what: str):
    """The answer's JSON; an answer that is not JSON is the instance's fault."""
    try:
        return response.json()
    except ValueError:
        raise InstanceFault(f"{what} answered something that is not JSON: {response.text[:200]!r}") from None


def _close_quietly(ws: websocket.WebSocket) -> None:
    try:
        ws.close()
    except (OSError, websocket.WebSocketException) as exc:
        log.debug("closing the websocket: %s", exc)


def _history_error(status: dict) -> str:
    for name, data in status.get("messages", []):
        if name == "execution_error":
            return (f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                    f"{data.get('exception_message', '').strip()}")
    return "ComfyUI reported an error"
