"""An HTTP proxy in front of a real ComfyUI instance that injects one fault: for the first requests matching
a method and a path, it answers with an error status or resets the connection; everything else (the
websocket too) passes through untouched."""

from __future__ import annotations

import select
import socket
import struct
import threading
from dataclasses import dataclass


@dataclass
class Fault:
    method: str  # GET, POST
    path: str  # a prefix of the request's path, e.g. /prompt, /upload/image, /view, /history
    action: str  # "reset" (a TCP reset, no answer) or an HTTP status to answer with, e.g. "500"
    times: int = 1  # how many matching requests get the fault; later ones pass through
    hits: int = 0


class FaultProxy:
    def __init__(self, target_port: int, fault: Fault):
        self.target_port = target_port
        self.fault = fault
        self.requests: list[str] = []  # "METHOD /path" of every request seen (websocket upgrades too)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def count(self, method: str, path: str) -> int:
        return sum(1 for r in self.requests if r.startswith(f"{method} {path}"))

    def close(self) -> None:
        self.server.close()

    def _accept(self) -> None:
        accept_forever(self.server, self._serve)

    def _serve(self, client: socket.socket) -> None:
        try:
            head, rest = _read_head(client)
            method, path = head.split(b" ", 2)[:2]
            request = f"{method.decode()} {path.decode()}"
            with self._lock:
                self.requests.append(request)
                fault = self.fault
                hit = (request.startswith(f"{fault.method} {fault.path}") and fault.hits < fault.times)
                if hit:
                    fault.hits += 1
            if not hit:
                self._pipe(client, head + rest)
                return
            _read_body(client, head, rest)  # a client still sending would read a reset, not our answer
            if fault.action == "reset":
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                body = f"injected fault: {fault.action} for {request}".encode()
                client.sendall(f"HTTP/1.1 {fault.action} Injected\r\nContent-Type: text/plain\r\n"
                               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        except (OSError, ValueError):
            pass
        finally:
            client.close()

    def _pipe(self, client: socket.socket, first: bytes) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        upstream.sendall(first)
        try:
            relay(client, upstream)
        finally:
            upstream.close()


def accept_forever(server: socket.socket, serve) -> None:
    """Serves each connection in a thread of its own until the listening socket is closed."""
    while True:
        try:
            client, _ = server.accept()
        except OSError:
            return
        threading.Thread(target=serve, args=(client,), daemon=True).start()


def relay(client: socket.socket, upstream: socket.socket) -> None:
    """Copies bytes both ways until either side closes or fails."""
    sockets = [client, upstream]
    try:
        while True:
            readable, _, _ = select.select(sockets, [], [], 1.0)
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                (upstream if sock is client else client).sendall(data)
    except OSError:
        return


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ValueError("connection closed before a request")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    return head + b"\r\n\r\n", rest


def _read_body(sock: socket.socket, head: bytes, rest: bytes) -> None:
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    received = len(rest)
    while received < length:
        chunk = sock.recv(65536)
        if not chunk:
            return
        received += len(chunk)
