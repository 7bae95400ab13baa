"""Helpers for tests/cluster/test_multinode.py (no tests of its own): a multi-node Ray cluster on this
machine built with Ray's own `ray.cluster_utils.Cluster`, and a Ray driver in a process of
its own that the tests ask questions of (where replicas run, Serve's state).

Why a driver process: the test process must not `ray.init` into this cluster, because the
session's local Ray (`conftest.ray_cluster`) may already be connected in it, and a process holds
one Ray connection at a time. The functions below the `Driver` class run in that process.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from serve_support import free_port

WORKER_CPUS = 2  # logical CPUs per worker node (2 cores are shared by the whole machine)
OBJECT_STORE_BYTES = 100 * 1024**2
NODE_START_TIMEOUT_S = 180
# Env for every node's raylet and so its workers: the Serve handles and replicas report their
# load every second instead of every 10 s (Ray's documented knobs), so autoscaling decisions
# come within seconds; no usage-stats thread.
NODE_ENV = {
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    # A raylet aborts when its agents have not reported within 30 s ("Timed out waiting for
    # file .../dashboard_agent..."): their Python start-up exceeds that on a busy 2-core machine.
    "RAY_agent_register_timeout_ms": "180000",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


@dataclass
class MultiNodeCluster:
    """A head with 0 CPUs and worker nodes with WORKER_CPUS each, all on this machine and its
    IP address (Ray drivers cannot join a cluster on 127.0.0.1: `ray.init` rewrites a loopback
    address to the machine's own).

    The head holds the GCS, the drivers (Ray attaches a driver to the head when several nodes
    share its IP), the batch job's ledger and Serve's controller and HTTP proxy, none of which
    needs a CPU; everything that does (replicas, Ray Data tasks, the ingress) runs on the
    workers. So removing a worker never takes down a driver, and Ray's SPREAD scheduling (the
    default of Ray Data's actor pools and of Serve's replicas) puts two replicas on two
    different workers."""

    cluster: Any
    temp_dir: str
    workers: dict[str, Any] = field(default_factory=dict)  # node id -> ray._private.node.Node

    @property
    def address(self) -> str:
        return self.cluster.address

    @property
    def head_id(self) -> str:
        return self.cluster.head_node.node_id

    def add_worker(self) -> str:
        node = self.cluster.add_node(
            num_cpus=WORKER_CPUS,
            object_store_memory=OBJECT_STORE_BYTES,
            temp_dir=self.temp_dir,
            env_vars=NODE_ENV,
            **agent_ports(),
        )
        self.workers[node.node_id] = node
        return node.node_id

    def ensure_workers(self, count: int) -> None:
        """Add worker nodes until `count` are alive (a test that removed one leaves it to this)."""
        while len(self.workers) < count:
            self.add_worker()

    def remove_worker(self, node_id: str) -> None:
        """Kill the node's raylet and agents at once (no graceful shutdown: a lost machine); its
        worker processes exit when their raylet is gone."""
        node = self.workers.pop(node_id)
        self.cluster.remove_node(node, allow_graceful=False)


def agent_ports() -> dict[str, int]:
    """A node's agent ports, each chosen free: Ray's dashboard agent's fixed default (52365) is
    taken by the other Rays on the machine."""
    return {
        name: free_port()
        for name in (
            "dashboard_agent_listen_port",
            "metrics_agent_port",
            "metrics_export_port",
            "runtime_env_agent_port",
        )
    }


@contextlib.contextmanager
def multinode_cluster(workers: int) -> Iterator[MultiNodeCluster]:
    import ray._common.utils
    import ray._private.services
    import ray._private.utils
    from ray.cluster_utils import Cluster

    # Ray's socket paths must stay short: a temp dir right under /tmp, not pytest's.
    temp_dir = tempfile.mkdtemp(prefix="q3mn-", dir="/tmp")
    with pytest.MonkeyPatch.context() as patch:
        # Cluster writes its address to /tmp/ray/ray_current_cluster, where every plain
        # `ray.init()` on this machine (other test sessions, the conftest's) would then find and
        # join it, and its shutdown deletes that file whoever wrote it. This cluster is reached
        # only by its address.
        patch.setattr(ray._private.utils, "write_ray_address", lambda *args, **kwargs: None)
        patch.setattr(ray._common.utils, "reset_ray_address", lambda *args, **kwargs: None)
        # A node waits a fixed 30 s for its raylet to register with the GCS, which a 2-core
        # machine running other tests exceeds (measured: 40 s for the head alone at load 9).
        patch.setattr(ray._private.services, "get_node", _patient(ray._private.services.get_node))
        cluster = Cluster()
        multi = MultiNodeCluster(cluster, temp_dir)
        started = False
        try:
            try:
                cluster.add_node(  # the first node added is the head
                    num_cpus=0,
                    include_dashboard=False,
                    object_store_memory=OBJECT_STORE_BYTES,
                    temp_dir=temp_dir,
                    env_vars=NODE_ENV,
                    **agent_ports(),
                )
                multi.ensure_workers(workers)
            except Exception as error:
                started = False
                raise RuntimeError(
                    f"a node did not start (logs: {temp_dir}): {fatal_lines(temp_dir)}"
                ) from error
            started = True
            yield multi
        finally:
            cluster.shutdown()
            if started:  # a failed start keeps its logs
                shutil.rmtree(temp_dir, ignore_errors=True)


def _patient(get_node: Callable[..., Any]) -> Callable[..., Any]:
    def patient_get_node(*args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while True:
            try:
                return get_node(*args, **kwargs)
            except RuntimeError:  # not registered yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    return patient_get_node


def fatal_lines(temp_dir: str) -> list[str]:
    """The raylets' fatal log lines (Ray's "C" level), for a node that failed to start."""
    lines = []
    for log in Path(temp_dir).glob("session_*/logs/raylet*.out"):
        lines += [
            line[:400] for line in log.read_text(errors="replace").splitlines() if "] C " in line
        ]
    return lines


class Driver:
    """A Ray driver in a process of its own (multiprocessing, spawn), connected to `address`;
    `driver(fn, *args)` runs a function of this module there and returns its result."""

    def __init__(self, address: str):
        self._pool = multiprocessing.get_context("spawn").Pool(
            1, initializer=_connect, initargs=(address,)
        )

    def __call__(self, fn: Callable[..., Any], *args: Any, timeout: float = 120) -> Any:
        return self._pool.apply_async(fn, args).get(timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self(_disconnect, timeout=30)
        self._pool.terminate()
        self._pool.join()


# ---------------------------------------------------------------- run in the driver process
def _connect(address: str) -> None:
    import ray

    # log_to_driver off: the replicas' logs would land in the test's output.
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)


def _disconnect() -> None:
    import ray

    ray.shutdown()


def node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def alive_nodes() -> list[str]:
    import ray

    return sorted(node["NodeID"] for node in ray.nodes() if node["Alive"])


def start_serve(port: int) -> None:
    """Serve with one HTTP proxy, on the head: the nodes share one machine, so a proxy per node
    (Serve's default) would have them all bind the same port."""
    from ray import serve

    serve.start(
        proxy_location="HeadOnly",
        http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 60},
    )


def deploy(config: dict[str, Any], app: str, route_prefix: str) -> None:
    """`serve.run` of the project's app builder, as in the docs' Python example; returns when
    every replica runs."""
    from ray import serve

    from deployments.app import build_application
    from deployments.config import ServeAppConfig

    application = build_application(ServeAppConfig.model_validate(config), cluster_gpus=0)
    serve.run(application, name=app, route_prefix=route_prefix)


def delete(app: str) -> None:
    from ray import serve

    serve.delete(app)


def replicas(app: str) -> dict[str, list[dict[str, Any]]]:
    """Deployment -> its replicas (state, node_id, pid, actor_name), from Serve's controller."""
    import ray
    from ray.serve.context import _get_global_client

    details = ray.get(_get_global_client()._controller.get_serve_instance_details.remote())
    application = details["applications"].get(app)
    if application is None:
        return {}
    return {
        name: [
            {
                "state": str(replica["state"]).rsplit(".", 1)[-1],
                "node_id": replica.get("node_id"),  # none until it is placed
                "pid": replica.get("pid"),  # none until its actor starts
                "actor_name": replica["actor_name"],
            }
            for replica in deployment["replicas"]
        ]
        for name, deployment in application["deployments"].items()
    }


def ongoing_requests(actor_name: str) -> int:
    import ray

    replica = ray.get_actor(actor_name, namespace="serve")
    return ray.get(replica.get_num_ongoing_requests.remote(), timeout=10)


def wait_until(
    predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.5, what: str = ""
) -> Any:
    """Poll `predicate` until it returns something truthy (returned), or fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(interval_s)
