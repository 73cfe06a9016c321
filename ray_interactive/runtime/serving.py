"""The deployed side of a run on Ray Serve: what a model replica holds of the run.

A Ray Serve deployment that serves a run's model makes one :class:`ReplicaLink` in its
constructor. The link keeps the replica's copy of the model on the run's published weights
(a :class:`~ray_interactive.runtime.client.WeightSubscriber`, swapping under
:attr:`ReplicaLink.lock`) and logs the replica's interactions through a coalescing ingest
log (acknowledged when durable, exactly once)::

    @serve.deployment(num_replicas=4)
    class Model:
        def __init__(self, run):
            self.model = build_model()
            self.link = ri.ReplicaLink(run, self.model)

        @serve.batch(max_batch_size=8)
        async def __call__(self, requests):
            with self.link.lock, torch.inference_mode():
                out, version = self.model(collate(requests)), self.link.version
            self.link.log(rows(requests, out, version), "interactions")
            return split(out)

        def __del__(self):             # Serve calls it when the replica stops
            self.link.close()

:func:`deploy` starts Serve on the run's cluster (no HTTP proxy: the app in front calls the
deployment through its handle) and runs an application.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import ray

from ray_interactive.core.config import DEFAULT_NAMESPACE
from ray_interactive.core.messages import ReplicaOrders, ReplicaReport
from ray_interactive.runtime.client import connect

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def replica_name() -> str:
    """This replica's Serve id, or ``host:pid`` outside Serve."""
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # not inside a Serve replica
        return f"{socket.gethostname()}:{os.getpid()}"


class ReplicaLink:
    """One replica's link to a run: the weights it serves and its interaction log.

    ``follow``: load each version the trainer publishes as it comes (a background thread),
    unless the controller pins this replica to a version (a guarded rollout);
    ``report_s``: how often it tells the controller which version it serves;
    ``ingest``: options of :meth:`RunClient.ingest_log` (``max_rows``, ``max_delay_s``, ...)."""

    def __init__(
        self,
        run: str,
        module: torch.nn.Module,
        namespace: str = DEFAULT_NAMESPACE,
        follow: bool = True,
        name: str | None = None,
        report_s: float = 2.0,
        **ingest: Any,
    ) -> None:
        self.run = run
        self.name = name or replica_name()
        self.client = connect(run, namespace=namespace, quiet=True)
        self.report_s = report_s
        self.served = 0  # requests answered: count them with answered()
        self.orders = ReplicaOrders()
        self._swapped = threading.Event()
        self.subscriber = self.client.subscribe(module, on_swap=lambda _v: self._swapped.set())
        self._log = self.client.ingest_log(**ingest)
        self._closed = False
        self._stop = threading.Event()
        self._follow = follow
        self._module = module
        # Its own weights, while a guarded rollout may ask for them: what each loaded version
        # overwrote, as it was (an adapter's tensors, not a whole base, for partial versions).
        self._base: dict[str, Any] | None = None
        # The first orders before anything is loaded: under a guarded rollout a new replica
        # must not load the newest version (it may be a canary being judged).
        try:
            orders = self._send_report()
        except Exception as e:  # no answer: hold the module's own weights until there is one
            log.warning("replica %s: first report failed (%s: %s); serving its own weights", self.name, type(e).__name__, e)
            orders = ReplicaOrders(follow=False, version=0)
        self._obey(orders)
        # Tell the controller which version this replica serves (every report_s, and at
        # once after a swap); its answer says which version to serve (a pin, or the newest).
        self._reporter = threading.Thread(target=self._report_loop, name="replica-report", daemon=True)
        self._reporter.start()

    def answered(self, n: int = 1) -> None:
        self.served += n

    def report(self) -> ReplicaReport:
        st = self._log.stats()
        return ReplicaReport(name=self.name, version=self.version, pid=os.getpid(), host=socket.gethostname(),
                             served=self.served, logged_rows=st["sent_rows"], pending_rows=st["pending_rows"])

    def _send_report(self) -> ReplicaOrders:
        return ray.get(self.client._controller.replica_report.remote(self.report()), timeout=30)

    def _report_loop(self) -> None:
        while not self._stop.is_set():
            self._swapped.wait(self.report_s)
            self._swapped.clear()
            if self._stop.is_set():
                return
            try:
                self._obey(self._send_report())
            except Exception as e:  # the controller restarting: the next report tries again
                log.warning("replica %s: report failed: %s: %s", self.name, type(e).__name__, e)

    def _obey(self, orders: ReplicaOrders) -> None:
        """Serve what the controller says: the newest version, or one version (0: its own)."""
        sub = self.subscriber
        if orders.follow:
            if self._follow:
                if sub.pinned is not None:
                    sub.follow()
                sub.start()
        else:
            sub.stop()  # no background loads: only what the orders name
            if self._base is None and sub.loaded is None:
                self._base = {}
                sub.before_load = self._keep_base
            if orders.version == 0:
                if sub.loaded is not None:
                    self._restore_base()
            elif self.version != orders.version and orders.version is not None:
                sub.pin(orders.version)
        self.orders = orders

    def _keep_base(self, state: Mapping[str, Any]) -> None:
        """Before a version is loaded: copy what it overwrites that is not kept yet."""
        assert self._base is not None
        new = [k for k in state if k not in self._base]
        if new:
            own = self._module.state_dict()
            self._base.update({k: own[k].detach().clone() for k in new if k in own})

    def _restore_base(self) -> None:
        if self._base is None:
            log.error("replica %s: told to serve its own weights, which it did not keep", self.name)
            return
        sub = self.subscriber
        with sub.lock:
            self._module.load_state_dict(self._base, strict=False)
            sub.previous, sub.loaded = sub.loaded, None
        sub._pin = None
        self._swapped.set()  # report the change at once

    @property
    def lock(self) -> Any:
        """Hold it for inference: a weight swap never lands in the middle of one."""
        return self.subscriber.lock

    @property
    def version(self) -> int:
        """The weights version loaded (0: the module's own weights; nothing published yet).
        Read it under :attr:`lock` to know the version that drew an output."""
        loaded = self.subscriber.loaded
        return loaded.version if loaded is not None else 0

    def log(self, table: pa.Table | pa.RecordBatch, source: str) -> Future[dict[str, Any]]:
        """Log rows to ``source``; the future resolves with their acknowledgement once durable."""
        return self._log.add(table, source)

    def stats(self) -> dict[str, Any]:
        return {**self.report().model_dump(mode="json"), **self._log.stats()}

    def close(self, timeout: float = 30.0) -> int:
        """Stop following and send the rows still pending; returns the rows it could not send."""
        if self._closed:
            return 0
        self._closed = True
        self._stop.set()
        self._swapped.set()
        self.subscriber.stop()
        return self._log.close(timeout)


def deploy(app: Any, name: str, namespace: str = DEFAULT_NAMESPACE) -> Any:
    """Run a Serve application ``app`` (``Deployment.bind(...)``) named ``name`` on the
    cluster this process is connected to, starting Serve there if needed, without its HTTP
    proxy (the Gradio app in front calls the deployment through the handle returned)."""
    from ray import serve

    from ray_interactive.runtime.connection import init_ray

    if not ray.is_initialized():
        init_ray(None, namespace=namespace, default="auto", quiet=True)
    serve.start(proxy_location="Disabled")
    return serve.run(app, name=name, route_prefix=None)


def undeploy(name: str) -> None:
    """Stop the application ``name`` (its replicas run their ``__del__``: the links flush)."""
    from ray import serve

    try:
        serve.delete(name)
    except Exception as e:  # Serve already gone with the cluster
        log.warning("stopping the Serve application %r: %s", name, e)
