"""Connecting this process to Ray: the embedded local cluster, this machine's, or a remote one."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import ray


def init_ray(address: str | None = None, namespace: str | None = None, default: str | None = None,
             quiet: bool = False, **kwargs: Any) -> None:
    """Connect to ``address``, else RAY_ADDRESS, else ``default``: None starts an embedded
    local cluster, ``"auto"`` attaches to the one running on this machine. ``quiet``: no
    INFO lines from Ray and no worker output (a client that only asks, like the CLI).

    A second process attaching to a local cluster with token auth (Ray's default) needs
    ``RAY_AUTH_MODE=token`` set before ray is imported; importing ray_interactive does it.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or default
    if address and address != "auto" and not address.startswith("ray://"):
        _check_reachable(address)
    try:
        if quiet:
            kwargs = {"logging_level": logging.WARNING, "log_to_driver": False, **kwargs}
        ray.init(address=address, namespace=namespace, **{"log_to_driver": True, **kwargs})
    except ConnectionError as e:
        if address == "auto":
            raise ConnectionError(
                "no Ray cluster is running on this machine, so no run to attach to: start one "
                "(`ray-interactive run ...`, `make demo`) or give the cluster's --address / RAY_ADDRESS"
            ) from None
        raise ConnectionError(f"cannot reach a Ray cluster at {address!r}: {e}") from None


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail in seconds, not minutes: Ray retries an unreachable GCS for a long time."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except ValueError:
        raise ConnectionError(f"bad Ray address {address!r}: expected host:port") from None
    except OSError as e:
        raise ConnectionError(
            f"cannot reach a Ray cluster at {address}: {e.strerror or e}. Is the cluster up (`ray status`)? "
            "Leave RAY_ADDRESS unset to run on an embedded local Ray."
        ) from None
