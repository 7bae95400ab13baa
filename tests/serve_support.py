"""Helpers shared by the serving tests (no tests of its own): free ports, a socket that records
connections, a tiny HTTP server with redirects, OpenAI error-shape checks, an app deployed on the session's Serve for a test module, `qwen3-embed serve` run as a subprocess."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image

# What a listening socket's address is when it is on loopback (IPv4, IPv6, IPv4-mapped).
LOOPBACK_ADDRESSES = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})


def free_port() -> int:
    """A free port for a server a test starts, from below the kernel's ephemeral range
    (`deployments.ray_env.free_port`): a port the OS picked (bind 0) and released is soon handed
    to the next process that binds port 0, and Ray starts dozens of them before its proxy binds
    the port (seen in CI: a Serve ProxyActor's gRPC server took the tests' HTTP port)."""
    from deployments.ray_env import free_port as reserved_free_port

    return reserved_free_port()


def png_bytes(
    width: int = 40, height: int = 30, color: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def image_bytes(width: int, height: int, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    """An image file of any PIL mode and format (e.g. a 20,000 x 20,000 mode-"1" PNG: a
    decompression bomb that is ~50 KB on the wire)."""
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, fmt)
    return buffer.getvalue()


class ConnectionRecorder:
    """A listening TCP socket that counts (and closes) every connection made to it: the proof
    that a forbidden address was never contacted."""

    def __init__(self, host: str = "127.0.0.1"):
        self._sock = socket.socket()
        self._sock.bind((host, 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.host, self.port = self._sock.getsockname()[:2]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()


class MediaServer:
    """An HTTP server on `host` with routes given as path -> (status, headers, body) or a
    callable returning that; it records the Host header of every request."""

    def __init__(self, routes: dict[str, Any], host: str = "127.0.0.2"):
        self.routes = routes
        self.requests: list[tuple[str, str]] = []  # (path, Host header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append((self.path, self.headers.get("Host", "")))
                route = server.routes.get(self.path.split("?")[0])
                if route is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                status, headers, body = route() if callable(route) else route
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if "Content-Length" not in headers and "X-No-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)  # the client may hang up first (size limits)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer((host, 0), Handler)
        self._httpd.daemon_threads = True
        self.host, self.port = self._httpd.server_address[:2]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def slow_route(
    delay_s: float, body: bytes = b"x"
) -> Callable[[], tuple[int, dict[str, str], bytes]]:
    def route() -> tuple[int, dict[str, str], bytes]:
        time.sleep(delay_s)
        return 200, {}, body

    return route


def assert_openai_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """`response` (httpx) is `status` with an OpenAI-shaped error body; returns the error object."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if code is not None:
        assert error["code"] == code, error
    return error


_SERVE_PORT: int | None = None


def start_serve_once() -> int:
    """Start Serve's HTTP proxy on a free loopback port, once per test session (Serve's HTTP
    options cannot change while it runs); returns the port. Needs Ray initialised."""
    global _SERVE_PORT
    if _SERVE_PORT is None:
        import httpx
        from ray import serve

        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 60})
        # Serve ignores new options when it is already running: prove the proxy is on our port.
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/-/healthz", timeout=2)
                break  # any HTTP answer: the proxy listens on our port
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Serve proxy does not answer on port {port}")
            time.sleep(0.2)
        _SERVE_PORT = port
    return _SERVE_PORT


@contextlib.contextmanager
def deployed_app(config: Any, app: str, route_prefix: str) -> Iterator[str]:
    """`config` (a ServeAppConfig or its mapping) deployed as `app` on the session's Serve, the
    base URL of its routes yielded; the app is deleted afterwards. Needs Ray initialised."""
    from ray import serve

    from deployments.app import build_application
    from deployments.config import ServeAppConfig

    port = start_serve_once()
    if not isinstance(config, ServeAppConfig):
        config = ServeAppConfig.model_validate(config)
    serve.run(build_application(config, cluster_gpus=0), name=app, route_prefix=route_prefix)
    try:
        yield f"http://127.0.0.1:{port}{route_prefix}"
    finally:
        serve.delete(app)


@contextlib.contextmanager
def api_client(base_url: str, key: str | None = None, timeout: float = 60) -> Iterator[Any]:
    """An httpx client of `base_url`, sending `key` as the bearer token when given."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=base_url, headers=headers, timeout=timeout) as client:
        yield client


def post_concurrently(
    base_url: str, bodies: list[Any], key: str | None = None, path: str = "/v1/embeddings"
) -> list[Any]:
    """POST every body at once (one asyncio client), the responses in the bodies' order."""
    import asyncio

    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def post_all() -> list[Any]:
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120) as client:
            return await asyncio.gather(*(client.post(path, json=body) for body in bodies))

    return asyncio.run(post_all())


def assert_embeddings_ok(response: Any, count: int, dim: int) -> list[list[float]]:
    """`response` (httpx) is a 200 embeddings answer with `count` rows of `dim` floats (float
    encoding) in order; returns the rows."""
    assert response.status_code == 200, (response.status_code, response.text[:500])
    body = response.json()
    assert body["object"] == "list" and isinstance(body["model"], str), body
    assert [row["index"] for row in body["data"]] == list(range(count)), body["data"]
    rows = [row["embedding"] for row in body["data"]]
    assert all(len(row) == dim for row in rows), [len(row) for row in rows]
    usage = body["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] > 0, usage
    return rows


# ------------------------------------------------------------ Serve's own view of an app
def replicas(app: str) -> dict[str, list[dict[str, Any]]]:
    """Deployment -> its running replicas (actor_name, pid, ...) from the Serve controller."""
    import ray
    from ray.serve.context import _get_global_client

    details = ray.get(_get_global_client()._controller.get_serve_instance_details.remote())
    return {
        name: [r for r in deployment["replicas"] if str(r["state"]).endswith("RUNNING")]
        for name, deployment in details["applications"][app]["deployments"].items()
    }


def actor_pid(actor_name: str) -> int:
    """The pid of a Serve actor (replica, proxy), asked of the actor itself."""
    import ray

    actor = ray.get_actor(actor_name, namespace="serve")
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=30)


def proxy_pids() -> list[int]:
    import ray
    from ray.serve.context import _get_global_client

    details = ray.get(_get_global_client()._controller.get_serve_instance_details.remote())
    return [actor_pid(proxy["actor_name"]) for proxy in details["proxies"].values()]


REPO = Path(__file__).resolve().parents[1]


def start_serve_command(
    arguments: list[str], log: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen:
    """`python -m qwen3_embed serve ARGUMENTS` as a user starts it, with its own private Ray (no
    RAY_ADDRESS) and output in `log`. Its own session: a failing test kills the whole tree
    (driver, Ray, HAProxy) with os.killpg."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(extra_env or {})})
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "qwen3_embed", "serve", *arguments],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_serving(proc: subprocess.Popen, url: str, log: Path, timeout_s: float = 240) -> None:
    """Until the command says it is serving (start-up over) and `url` (/ready) answers 200."""
    import httpx
    import pytest

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"serve exited early with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if (
                "qwen3-embed: serving" in log.read_text()
                and httpx.get(url, timeout=2).status_code == 200
            ):
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"not ready after {timeout_s}s:\n{log.read_text()[-4000:]}")


def kill_serve_command(proc: subprocess.Popen) -> None:
    """If the command still runs (a test failed), kill its whole session, and every process
    under it by name too: Ray starts HAProxy in a process group of its own, and HAProxy outlives
    a killed Ray."""
    import psutil

    if proc.poll() is None:
        descendants = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGKILL)
        for process in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        proc.wait(timeout=30)


def serve_processes(proc: subprocess.Popen, title_part: str) -> list[Any]:
    """The live processes under a `qwen3-embed serve` subprocess (its Ray and what Ray started)
    whose command line contains `title_part` (Ray titles its actors `ray::ServeReplica:...`)."""
    import psutil

    found = []
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if title_part in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found
