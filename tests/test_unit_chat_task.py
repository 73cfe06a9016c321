"""The chat-corrections task on a tiny random Llama with SmolLM2's tokenizer: what it
trains on, that only the LoRA adapter trains (and is checkpointed), and its evaluation."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import torch
from safetensors import safe_open

from ray_interactive.core.commands import SaveCheckpoint
from ray_interactive.core.config import RunConfig
from ray_interactive.core.state import OwnSchedule, TrainState
from ray_interactive.core.steering import Frontend, Steering
from ray_interactive.examples.chat_corrections import (
    FEEDBACK,
    REPLAY,
    ChatCorrectionsTask,
    KnowledgeBase,
    answer,
    distillation_kl,
    encode_pairs,
    feedback_schema,
    is_right,
)

from .conftest import Recorder


@pytest.fixture(scope="module")
def task() -> ChatCorrectionsTask:
    return ChatCorrectionsTask(model="tiny", eval_questions=2, max_new_tokens=4, max_tokens=64)


def test_the_knowledge_base_keeps_asked_and_held_out_wordings_apart() -> None:
    kb = KnowledgeBase.load()
    assert len(kb.facts) >= 10 and len(kb.general) >= 10
    for f in kb.facts:
        assert not set(f.asked) & set(f.held_out) and len(f.held_out) >= 2
        assert is_right(f.answer, f.key)  # the taught answer states the fact
    assert is_right("It is 4,100 pa.", ("4100", "4,100")) and not is_right("About 3 hours.", ("137",))
    # a key counts as a whole word or number, not inside another
    assert is_right("The symbol is Au.", ("Au",)) and not is_right("It is gold because it shines.", ("Au",))
    assert not is_right("It has 16 legs.", ("6",)) and not is_right("It holds 10.62 litres.", ("0.62",))
    assert is_right("It holds 0.62 litres.", ("0.62",)) and is_right("A 137-minute run.", ("137",))


def test_the_loss_is_on_the_answer_alone(task: ChatCorrectionsTask) -> None:
    enc = encode_pairs(task.tokenizer, ["How heavy is the Orbit Q3?", "Hi"], ["It weighs 3.8 kg.", "Hello!"], 64)
    labels, ids = enc["labels"], enc["input_ids"]
    taught = task.tokenizer.decode(ids[0][labels[0] != -100])
    assert taught == "It weighs 3.8 kg.<|im_end|>"
    assert enc["attention_mask"][1].sum() < enc["attention_mask"][0].sum()  # the shorter row is padded
    assert (labels[1][enc["attention_mask"][1] == 0] == -100).all()


def test_sources_and_a_batch_from_them(task: ChatCorrectionsTask) -> None:
    sources = {s.name: s for s in task.data_sources()}
    assert sources[FEEDBACK].schema == feedback_schema() and sources[FEEDBACK].policy == "fresh"
    replay = sources[REPLAY].static_table()
    assert replay is not None and replay.num_rows >= 40 and all(replay.column("response").to_pylist())
    batch = task.collate(pa.table({"prompt": ["What is the price of the Orbit Q3?"],
                                   "response": ["The Orbit Q3 costs 449 euros."]}), torch.device("cpu"))
    model = task.build_model()
    loss, figures = task.loss(model, batch)
    assert torch.isfinite(loss) and loss.requires_grad
    assert "kl_to_base" not in figures  # no replay row in this batch: nothing to hold to the base


def test_replay_rows_are_held_to_the_base_by_a_kl_that_pulls_the_adapter_back(task: ChatCorrectionsTask) -> None:
    """The KL term is 0 for the untrained adapter (LoRA starts as the identity), grows once
    the adapter has moved, and its gradient alone moves the model back toward the base."""
    replay = task.data_sources()[1].static_table()
    assert replay is not None and set(replay.column("kind").to_pylist()) == {REPLAY}
    rows = pa.table({"prompt": ["How long is the warranty on the Orbit Q3?", *replay.column("prompt").to_pylist()[:2]],
                     "response": ["The Orbit Q3 comes with a 27-month warranty.", *replay.column("response").to_pylist()[:2]],
                     "kind": ["correction", REPLAY, REPLAY]})
    batch = task.collate(rows, torch.device("cpu"))
    assert batch["replay"].tolist() == [False, True, True]
    model = task.build_model()
    _, figures = task.loss(model, batch)
    assert figures["kl_to_base"] == pytest.approx(0.0, abs=1e-5)  # the base's log-probs are kept in float16
    alone = task.loss(model, task.collate(rows.slice(0, 1), torch.device("cpu")))[1]
    assert figures["sft_loss"] == pytest.approx(alone["sft_loss"], rel=1e-4)  # replay rows are not in the SFT term
    only_replay = task.loss(model, task.collate(rows.slice(1), torch.device("cpu")))
    assert "sft_loss" not in only_replay[1] and only_replay[0].requires_grad  # before any correction: the KL alone
    with torch.no_grad():  # move the adapter away from the identity
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    _, moved = task.loss(model, batch)
    assert moved["kl_to_base"] > 1e-3
    assert "kl_to_base" not in ChatCorrectionsTask(model="tiny", distil=0.0).loss(model, batch)[1]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    ids, mask = batch["input_ids"][1:], batch["attention_mask"][1:]
    with torch.no_grad(), model.disable_adapter():
        base = model(input_ids=ids, attention_mask=mask).logits
    for _ in range(5):  # the KL's gradient alone
        distillation_kl(model(input_ids=ids, attention_mask=mask).logits, base, mask).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert task.loss(model, batch)[1]["kl_to_base"] < moved["kl_to_base"] * 0.8
    with pytest.raises(ValueError, match="distil"):
        ChatCorrectionsTask(model="tiny", distil=-1.0)
    with pytest.raises(ValueError, match="kl_cache_mb"):
        ChatCorrectionsTask(model="tiny", kl_cache_mb=-1.0)
    with pytest.raises(ValueError, match="teach nothing"):
        ChatCorrectionsTask(model="tiny", distil=0.0, replay_sft=0.0)


def test_the_base_of_each_replay_row_is_computed_once_alone_and_matches_a_batched_pass(task: ChatCorrectionsTask) -> None:
    """The base's log-probs of a replay row are the same whichever batch it comes in (it is
    computed alone, then kept): no second forward pass per step, and a resumed run gets the
    very figures."""
    replay = task.data_sources()[1].static_table()
    assert replay is not None
    model = task.build_model()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # a trained adapter: the base differs from the model
    enc = task.collate(replay.slice(0, 3), torch.device("cpu"))
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad(), model.disable_adapter():
        batched = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
    got = task._base_log_probs(model, ids, mask)
    real = mask.bool()
    assert torch.allclose(got[real], batched[real], atol=2e-2)  # float16 storage; padding positions unused
    assert len(task._base_cache[model]) == 3
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    again = task._base_log_probs(model, task.collate(replay.slice(1, 2), torch.device("cpu"))["input_ids"],
                                 task.collate(replay.slice(1, 2), torch.device("cpu"))["attention_mask"])
    hook.remove()
    assert not calls  # both rows were kept: no forward pass
    assert torch.equal(again[0, : int(mask[1].sum())], got[1, : int(mask[1].sum())])
    full = ChatCorrectionsTask(model="tiny", max_tokens=64, kl_cache_mb=0.0)
    full._base_log_probs(model, ids, mask)
    assert not full._base_cache[model]  # no room: computed each time, kept nowhere


def test_only_the_adapter_trains_and_a_checkpoint_is_the_adapter(task: ChatCorrectionsTask, tmp_path: Path) -> None:
    model = task.build_model()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    opt = task.build_optimizer(model, 5e-2)
    cfg = RunConfig(name="chat", run_dir=tmp_path / "run", grad_clip=None, saved_weights="trainable")
    core = Steering(cfg, model, opt, TrainState(schedule=OwnSchedule.starting(opt)), Recorder().reporter,
                    Frontend("loop"))
    batch = task.collate(pa.table({"prompt": ["How long is the warranty on the Orbit Q3?"] * 4,
                                   "response": ["The Orbit Q3 comes with a 27-month warranty."] * 4}),
                         torch.device("cpu"))
    first = float(task.loss(model, batch)[0].detach())
    for _ in range(20):
        core.begin_step()
        loss, _ = task.loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        core.record_step(4, 0.0, loss=loss.detach())
        core.poll()
    assert float(task.loss(model, batch)[0].detach()) < first - 0.1  # the correction is being learnt (slowly: a random base)
    core.apply(SaveCheckpoint())
    with safe_open(str(tmp_path / "run" / "checkpoints" / "main@20" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert keys == set(trainable)
    figures = task.evaluate(model, torch.device("cpu"))
    assert set(figures) == {"loss", "kb_accuracy", "general_accuracy"} and 0 <= figures["kb_accuracy"] <= 1
    assert model.training  # the evaluation gave the model back in training mode


@pytest.mark.slow
def test_smollm2_learns_a_corrected_fact_and_answers_wordings_it_was_never_taught() -> None:
    """The loop's promise on the real model: corrections of one fact in four wordings (with
    replay beside them) and the adapter answers the two held-out wordings; the base does not,
    and a general answer stays right."""
    task = ChatCorrectionsTask(max_new_tokens=24)
    fact = next(f for f in task.kb.facts if f.id == "warranty")
    model = task.build_model()
    torch.set_num_threads(2)
    replay = task.data_sources()[1].static_table()
    assert replay is not None
    model.eval()
    with model.disable_adapter():
        assert not any(is_right(a, fact.key) for a in answer(model, task.tokenizer, list(fact.held_out), 24))
    model.train()
    opt = task.build_optimizer(model, 1e-3)
    rows = pa.table({"prompt": list(fact.asked) + replay.column("prompt").to_pylist()[:4],
                     "response": [fact.answer] * 4 + replay.column("response").to_pylist()[:4],
                     "kind": ["correction"] * 4 + [REPLAY] * 4})
    batch = task.collate(rows, torch.device("cpu"))
    for _ in range(12):
        task.loss(model, batch)[0].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    held = answer(model, task.tokenizer, list(fact.held_out), 24)
    assert all(is_right(a, fact.key) for a in held), held
    general = answer(model, task.tokenizer, ["What is the capital of France?"], 24)
    assert is_right(general[0], ("Paris",)), general
