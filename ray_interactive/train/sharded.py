"""Checkpoints of a model sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``):
every rank writes its own shards of weights and optimizer state, in parallel, through
``torch.distributed.checkpoint`` (DCP); rank 0 adds the train state and its RNG, and
renames the directory into place once all shards are down (a crash leaves no
half-written checkpoint). A load reads the shards this rank needs: DCP reshards on load,
so a run saved on N ranks resumes on M.

    checkpoints/main@100/state.json        # info, train state, every rank's RNG (rank 0)
    checkpoints/main@100/rng.safetensors   # rank 0's torch RNG
    checkpoints/main@100/sharded/          # DCP: __0_0.distcp, __1_0.distcp, .metadata
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from ray_interactive.core.checkpoints import CheckpointInfo, CheckpointWriteError, capture_rng, restore_rng

__all__ = ["SHARDED_UNSUPPORTED", "ShardedCheckpoints", "is_sharded"]

#: What cannot be applied to a sharded model (refused at submission, with this reason).
SHARDED_UNSUPPORTED = {
    "update_module": "freezing or changing modules of a model sharded with FSDP needs it sharded again: not "
    "supported (restart the run with the change)",
    "publish_weights": "publishing the weights of a model sharded with FSDP is not supported: each rank holds a "
    "shard (load a checkpoint, or train without sharding)",
}


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model``'s parameters are DTensors (FSDP2, tensor parallel)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


class ShardedCheckpoints:
    """:class:`~ray_interactive.core.checkpointer.ShardedFiles` over DCP (every rank calls)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, rank: int, group: Any) -> None:
        self.model, self.optimizer, self.rank, self.group = model, optimizer, rank, group

    def write(self, root: Path, info: CheckpointInfo, doc: dict[str, Any]) -> Path:
        final, tmp = root / info.id, root / f"{info.id}.tmp"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier(group=self.group)  # the directory exists before any rank writes into it
        try:
            model_state, optim_state = get_state_dict(self.model, self.optimizer)
            dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / "sharded"))
            if self.rank == 0:
                from safetensors.torch import save_file

                rng_plain, rng_tensors = capture_rng()
                save_file({k: v.contiguous() for k, v in rng_tensors.items()}, str(tmp / "rng.safetensors"))
                (tmp / "state.json").write_text(json.dumps({
                    "info": info.to_dict(), "state": doc, "rng": rng_plain, "written_at": time.time(),
                    "sharded": {"world": dist.get_world_size()},
                }))
                tmp.rename(final)
        except BaseException as e:
            if self.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, Exception) and not isinstance(e, OSError):
                raise CheckpointWriteError(f"{type(e).__name__}: {e}") from e
            raise
        return final

    def read(self, path: Path) -> dict[str, Any]:
        from safetensors.torch import load_file

        doc = json.loads((path / "state.json").read_text())
        if not (path / "sharded").is_dir():
            raise ValueError(f"checkpoint {path.name} holds a whole model, not shards: this run's model is sharded "
                             "with FSDP (load it into an unsharded run)")
        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        state = {"model": model_state, "optim": optim_state}
        dcp.load(state, checkpoint_id=str(path / "sharded"))  # reshards when the world size differs
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        restore_rng(doc["rng"], load_file(str(path / "rng.safetensors")))
        return doc["state"]
