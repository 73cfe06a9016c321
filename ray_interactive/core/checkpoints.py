"""Checkpoint files: everything needed to resume or branch a run, in one directory each.

``checkpoints/<id>/`` holds

* ``model.safetensors`` - the weights (shared/tied tensors handled by safetensors),
* ``optimizer.pt``      - the optimizer's ``state_dict`` (loaded with ``weights_only``),
* ``rng.safetensors``   - torch CPU (and CUDA) generator states,
* ``state.json``        - plain state: step, branch, schedule, clipping, accumulation,
  the data position, Python and numpy RNG states, and the checkpoint's metadata.

A checkpoint is written to ``<id>.tmp`` and renamed, so a crash never leaves half of one.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Collection

    import torch


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (nothing of it is left on disk)."""


@dataclass(frozen=True)
class CheckpointInfo:
    """Where a checkpoint sits in the run's tree."""

    id: str
    branch: str
    step: int
    created_at: float
    reason: str  # "periodic", "command" or "final"
    parent: str | None = None  # the previous checkpoint on this lineage
    tag: str | None = None
    finite: bool = True  # whether every weight was finite (a health rollback skips it if not)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def checkpoint_id(root: Path, branch: str, step: int) -> str:
    """A readable, unique id: ``<branch>@<step>``, with ``.2``, ``.3`` ... on repeats."""
    base = f"{branch}@{step}"
    cid, n = base, 1
    while (root / cid).exists():
        n += 1
        cid = f"{base}.{n}"
    return cid


def capture_rng() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Python/numpy states (JSON-able) and torch generator states (tensors)."""
    import torch

    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    plain = {
        "python": [version, list(state), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    return plain, tensors


def rng_states(plain: dict[str, Any]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The Python and NumPy generator states a checkpoint holds as JSON, in the shapes
    ``random.setstate`` and ``np.random.set_state`` take."""
    version, state, gauss = plain["python"]
    name, keys, pos, has_gauss, cached = plain["numpy"]
    return (version, tuple(state), gauss), (name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached)


def restore_rng(plain: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    import torch

    python_state, numpy_state = rng_states(plain)
    random.setstate(python_state)
    np.random.set_state(numpy_state)
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)


def write_checkpoint(
    root: Path,
    info: CheckpointInfo,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    only: Collection[str] | None = None,
) -> Path:
    """Write a checkpoint atomically; returns its directory. ``only``: the names of the
    state dict entries to write (the rest is the task's fixed base: ``saved_weights``)."""
    import torch
    from safetensors.torch import save_file, save_model

    final = root / info.id
    tmp = root / f"{info.id}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir(parents=True)
        if only is None:
            save_model(model, str(tmp / "model.safetensors"))
        else:
            names = set(only)
            save_file({k: v.detach().contiguous() for k, v in model.state_dict().items() if k in names},
                      str(tmp / "model.safetensors"), metadata={"weights": "trainable"})
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        rng_plain, rng_tensors = capture_rng()
        save_file({k: v.contiguous() for k, v in rng_tensors.items()}, str(tmp / "rng.safetensors"))
        doc = {"info": info.to_dict(), "state": state, "rng": rng_plain, "written_at": time.time(),
               "weights": "all" if only is None else "trainable"}
        (tmp / "state.json").write_text(json.dumps(doc))
        tmp.rename(final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk leaves no half-written checkpoint
        if isinstance(e, Exception) and not isinstance(e, OSError):
            # torch and safetensors report a failed write as RuntimeError and their own types
            raise CheckpointWriteError(f"{type(e).__name__}: {e}") from e
        raise
    return final


def read_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> dict[str, Any]:
    """Load weights and optimizer state into the live objects, restore RNGs; return the
    plain state (step, branch, schedule, data position, ...)."""
    import torch
    from safetensors.torch import load_file, load_model

    doc = json.loads((path / "state.json").read_text())
    if "sharded" in doc:
        raise ValueError(f"checkpoint {path.name} holds a model sharded over {doc['sharded']['world']} ranks (FSDP): "
                         "load it into a run whose model is sharded (any number of ranks: it is resharded)")
    if doc.get("weights") == "trainable":  # the rest is the base the task builds: it never changed
        missing, unexpected = model.load_state_dict(load_file(str(path / "model.safetensors"), device=str(device)),
                                                    strict=False)
        missing = []
    else:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=True, device=str(device))
    if missing or unexpected:
        raise ValueError(f"checkpoint {path.name} does not match the model: missing {missing}, unexpected {unexpected}")
    opt_state = torch.load(path / "optimizer.pt", map_location=device, weights_only=True)
    optimizer.load_state_dict(opt_state)
    restore_rng(doc["rng"], load_file(str(path / "rng.safetensors")))
    return doc["state"]


def list_checkpoints(root: Path) -> list[CheckpointInfo]:
    """All complete checkpoints under ``root``, oldest first."""
    infos = []
    if root.exists():
        for d in root.iterdir():
            meta = d / "state.json"
            if d.is_dir() and not d.name.endswith(".tmp") and meta.exists():
                infos.append(CheckpointInfo(**json.loads(meta.read_text())["info"]))
    return sorted(infos, key=lambda c: c.created_at)
