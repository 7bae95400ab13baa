"""infinity (`infinity_emb v2`) as a serving peer: its own virtual environment (it pins older
transformers / sentence-transformers than this project), one server process at a time.

The environment is built once under `~/.cache/qwen3-embed-bench/` (override with
QWEN3_EMBED_BENCH_CACHE) from the base interpreter of the running one, with torch pinned to the
version this process runs, so pip reuses that wheel instead of fetching another torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

INFINITY_REQUIREMENT = "infinity-emb[server,torch]==0.0.78"


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "qwen3-embed-bench"
    return Path(os.environ.get("QWEN3_EMBED_BENCH_CACHE", default))


def ensure_environment(log) -> Path:
    """The `infinity_emb` executable, installing its environment first when missing."""
    import torch

    venv = cache_dir() / "infinity-venv"
    executable = venv / "bin" / "infinity_emb"
    if executable.exists():
        return executable
    venv.parent.mkdir(parents=True, exist_ok=True)
    log(f"installing {INFINITY_REQUIREMENT} into {venv} (once)")
    subprocess.run([Path(sys.base_prefix) / "bin" / "python3", "-m", "venv", venv], check=True)
    pin = venv.parent / "infinity-constraints.txt"
    pin.write_text(f"torch=={torch.__version__.split('+')[0]}\n")
    subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "-q", "-c", pin, INFINITY_REQUIREMENT],
        check=True,
    )
    return executable


class InfinityServer:
    """`with InfinityServer(...) as url:` an OpenAI-style /embeddings on 127.0.0.1."""

    def __init__(
        self, executable: Path, model_dir: Path, port: int, device: str, name: str, threads: int
    ):
        self.threads = threads
        self.command = [
            str(executable),
            "v2",
            "--model-id",
            str(model_dir),
            "--served-model-name",
            name,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            device,
            "--engine",
            "torch",
            "--no-bettertransformer",  # not for Qwen3; infinity would refuse or fall back
        ]
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> str:
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "INFINITY_ANONYMOUS_USAGE_STATS": "0",
            "DO_NOT_TRACK": "1",
            "OMP_NUM_THREADS": str(self.threads),  # as many torch threads as the others get
        }
        env.pop("PYTHONPATH", None)  # its own libraries only
        self.log = open(cache_dir() / "infinity-server.log", "w")  # noqa: SIM115 (closed in __exit__)
        # cwd: infinity creates `.infinity_cache` in its working directory; not in the repo.
        self.process = subprocess.Popen(
            self.command, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=cache_dir()
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"infinity exited with {self.process.returncode}; see {self.log.name}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return f"{self.url}/embeddings"
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.__exit__(None, None, None)
        raise RuntimeError(f"infinity did not become healthy in 300 s; see {self.log.name}")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
