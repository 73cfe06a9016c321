"""The chat that learns from corrections: answer speed alone and beside its trainer, adapter
publish -> served latency, and training speed, on this machine's CPUs.

1. The chat alone: SmolLM2-135M-Instruct (+ an untrained LoRA adapter) in this process, one
   torch thread, answering the knowledge base's questions greedily (up to 48 new tokens):
   generated tokens/s and seconds per answer.
2. Training alone: the task's steps (batch 8: corrections and replay) in this process, one thread.
3. Both at once: a real run (the trainer actor, one thread) learning from a stream of
   corrections and publishing its adapter every ``--publish-every`` steps, while this
   process serves the same questions through a ``ReplicaLink`` that follows the versions:
   tokens/s then, the trainer's steps/s then, and for each version the seconds from the
   trainer's copy to the adapter loaded in the chat (``loaded_at - time``).

    python benchmarks/bench_chat.py [--questions 12] [--versions 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, median, percentile, save  # noqa: E402

from ray_interactive.examples.chat_corrections import feedback_schema  # noqa: E402


def serve_questions(engine: Any, tokenizer: Any, questions: list[str]) -> dict[str, float]:
    tokens, seconds = [], []
    for q in questions:
        t0 = time.perf_counter()
        ex = engine.ask(q)
        seconds.append(time.perf_counter() - t0)
        tokens.append(len(tokenizer(ex.answer, add_special_tokens=False).input_ids))
    return {"tokens_per_s": sum(tokens) / sum(seconds), "answer_s_p50": median(seconds),
            "answer_s_p95": percentile(seconds, 0.95), "answers": len(seconds)}


def train_alone(steps: int) -> dict[str, Any]:
    """The task's steps in this process, twice in the same run: the replay rows' base
    log-probs kept (the task's default: computed once per row) and recomputed by a second
    forward pass of those rows every step (the code before the cache, as its baseline)."""
    import pyarrow as pa
    import torch

    import ray_interactive as ri
    from ray_interactive.examples.chat_corrections import ChatCorrectionsTask

    def recomputed(self: Any, model: Any, ids: Any, mask: Any) -> Any:  # the loss before the cache
        with torch.no_grad(), model.disable_adapter():
            return model(input_ids=ids, attention_mask=mask).logits

    out: dict[str, Any] = {}
    for label in ("recomputed", "kept"):
        task = ri.chat.ChatCorrectionsTask()
        if label == "recomputed":
            task._base_log_probs = recomputed.__get__(task, ChatCorrectionsTask)  # type: ignore[method-assign]
        model = task.build_model()
        opt = task.build_optimizer(model, 1e-3)
        kb = task.kb
        replay = task.data_sources()[1].static_table()
        rows = pa.table({"prompt": [f.asked[0] for f in kb.facts[:4]] + replay.column("prompt").to_pylist()[:4],
                         "response": [f.answer for f in kb.facts[:4]] + replay.column("response").to_pylist()[:4],
                         "kind": ["correction"] * 4 + [ri.chat.REPLAY] * 4})  # the replay rows are held to the base
        times = []
        for i in range(steps + 2):
            t0 = time.perf_counter()
            loss, _ = task.loss(model, task.collate(rows, torch.device("cpu")))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= 2:  # the first steps allocate (and fill the cache)
                times.append(time.perf_counter() - t0)
        out[label] = {"steps_per_s": 1 / median(times), "step_s_p50": median(times), "steps": len(times)}
        print(f"training alone, base log-probs {label}: {out[label]}", flush=True)
    return {**out["kept"], "recomputed": out["recomputed"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=12)
    ap.add_argument("--train-steps", type=int, default=8)
    ap.add_argument("--versions", type=int, default=8)
    ap.add_argument("--publish-every", type=int, default=3)
    a = ap.parse_args()
    info = machine()
    import pyarrow as pa
    import torch

    import ray_interactive as ri

    torch.set_num_threads(1)
    tok = ri.chat.load_tokenizer()
    kb = ri.chat.KnowledgeBase.load()
    questions = [q for f in kb.facts for q in f.asked][: a.questions]
    model = ri.chat.build_chat_model("smollm2")
    alone = serve_questions(ri.chat.ChatEngine(model, tok), tok, questions)
    print("chat alone", alone, flush=True)
    training = train_alone(a.train_steps)

    with tempfile.TemporaryDirectory() as tmp:
        config = ri.RunConfig(name=f"bench-chat-{os.getpid()}", run_dir=Path(tmp) / "run", torch_threads=1,
                              task=ri.TaskSpec(target=ri.chat.TASK), batch_size=8, lr=1e-3,
                              saved_weights="trainable", publish_every=a.publish_every, checkpoint_interval_s=None,
                              mixture={ri.chat.FEEDBACK: 1.0, ri.chat.REPLAY: 1.0})
        handle = ri.start_run(config)
        try:
            client = handle.client()
            rows = pa.Table.from_pylist([{"prompt": f.asked[0], "response": f.answer, "kind": "correction",
                                          "model_version": 0, "time": time.time()} for f in kb.facts],
                                        schema=feedback_schema())
            client.ingest(rows, ri.chat.FEEDBACK)
            swaps: list[dict[str, Any]] = []
            done = threading.Event()
            link = ri.ReplicaLink(config.name, model, namespace=config.namespace)
            told = link.subscriber.on_swap  # the link's own: it reports the swap at once

            def swapped(v: Any) -> None:
                swaps.append({**v.to_dict(), **link.subscriber.last_swap})
                if len(swaps) > a.versions:
                    done.set()
                if told is not None:
                    told(v)

            link.subscriber.on_swap = swapped
            engine = ri.chat.ChatEngine(model, tok, lock=link.lock, version=lambda: link.version, send=link.log)
            while client.status()["step"] < 2:
                time.sleep(1)
            s0, t0 = client.status()["step"], time.monotonic()
            beside = serve_questions(engine, tok, questions)
            s1, t1 = client.status()["step"], time.monotonic()
            beside["trainer_steps_per_s"] = (s1 - s0) / (t1 - t0)
            print("chat beside the trainer", beside, flush=True)
            done.wait(timeout=120 + 60 * a.versions)
            link.close()
        finally:
            handle.shutdown()
    lat = [s["loaded_at"] - s["time"] for s in swaps[1:]]  # the first: the version at the start
    sizes = [s["nbytes"] for s in swaps]
    result = {"machine": info, "chat_alone": alone, "training_alone": training, "chat_beside_trainer": beside,
              "publish_to_served_s": lat, "adapter_bytes": sizes[-1] if sizes else None}
    md = f"""## Chat that learns from corrections (`bench_chat.py`)

{info['date']}, commit {info['commit']}, {info['cpus']} CPUs, load {info['loadavg_1m_at_start']} at the start.
SmolLM2-135M-Instruct + LoRA r 8 (2.4M trainable), one torch thread each for the chat and the trainer;
{alone['answers']} questions answered greedily (<= 48 new tokens). One pass. Seconds per answer follow the answers' length (they change as the
model learns): compare tokens/s.

| | chat tokens/s | s per answer p50 / p95 | trainer steps/s (batch 8) |
|---|---|---|---|
| alone (in this process) | {alone['tokens_per_s']:.1f} | {alone['answer_s_p50']:.2f} / {alone['answer_s_p95']:.2f} | {training['steps_per_s']:.2f} |
| alone, base log-probs recomputed each step (before) | | | {training['recomputed']['steps_per_s']:.2f} |
| both at once (trainer actor + chat) | {beside['tokens_per_s']:.1f} ({beside['tokens_per_s'] / alone['tokens_per_s']:.2f}x) | {beside['answer_s_p50']:.2f} / {beside['answer_s_p95']:.2f} | {beside['trainer_steps_per_s']:.2f} ({beside['trainer_steps_per_s'] / training['steps_per_s']:.2f}x) |

The trainer alone runs the same batch (4 corrections, 4 replay rows) each step: the replay rows' base
log-probs are kept after the first step (the task computes each row's once); the run's trainer meets new replay
rows until it has seen all 48, and computes those then.

Adapter publish -> loaded in the chat ({len(lat)} versions, {(sizes[-1] if sizes else 0) / 1e6:.1f} MB each):
p50 {median(lat) if lat else float('nan'):.2f} s, p95 {percentile(lat, 0.95):.2f} s (from the trainer's copy; a swap
waits for the answer being generated: the chat holds the model while it answers). Leaves out: a GPU (none here),
more than one chat process, batching of concurrent questions.
"""
    save("chat", result, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
