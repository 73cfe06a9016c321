"""The HF front-end's metric rows: a step's row goes out with the loss HF logs for it (just
after the step's end hook), so a checkpoint's metrics reach the controller complete."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ray_interactive.core.messages import CheckpointSaved, Progress
from ray_interactive.train import hf
from ray_interactive.train.ranks import FollowerRun

from .conftest import SHARED_DATA, Trace


@pytest.mark.skipif(not (SHARED_DATA / "wikitext-2").exists(), reason="needs ../shared/data")
def test_a_checkpoints_rows_carry_hfs_loss_and_are_waited_for(tmp_path: Path) -> None:
    from ray_interactive.examples.hf_wikitext import build_trainer

    trace = Trace()

    def open_run(config: Any, address: Any, resume: bool = False, resume_from: Any = None) -> FollowerRun:
        link = FollowerRun(next_seq=1, resume_from=None)
        link.reporter = trace.reporter
        return link

    torch.set_num_threads(1)
    trainer = build_trainer(SHARED_DATA, tmp_path / "out", max_steps=5, n_layer=1, n_embd=32, block=32,
                            batch_size=4, train_chars=20_000, eval_chars=2_000)
    hf.steer(trainer, "hf-rows", open_run=open_run, run_dir=tmp_path / "run", checkpoint_every=2,
             metrics_interval_s=60.0)
    trainer.train()
    sent = trace.sent(Progress)
    i = next(i for i, r in sent if any(isinstance(e, CheckpointSaved) and e.info.step == 2 for e in r.events))
    step2: dict[str, float] = {}
    for j, r in sent:
        if j <= i:
            for step, _, values in r.rows:
                if step == 2:
                    step2.update(values)
    assert "loss" in step2 and "lr" in step2, step2  # the row complete by the report of the checkpoint
    assert trace.waited_for(i), trace.events  # answered before training went on
