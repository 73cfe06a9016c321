"""Which replay loss learns the product's facts and keeps the rest? A quick pilot, no Ray.

The chat model (SmolLM2-135M-Instruct + LoRA) trains in a plain loop on what the loop of
``make demo-chat`` would feed it, in a fixed order: the corrections of fact k (its four
``asked`` wordings) arrive at step 4k, a batch holds the 4 newest unused corrections (or
random earlier ones) and 4 random replay rows; after ``--steps`` steps (lr 1e-3, AdamW)
it is evaluated like the run evaluates (held-out wordings, general questions, WikiText-2
perplexity). Each arm is a setting of the task's replay loss:

* ``sft``: plain cross-entropy on the base's answers, one mean over all answer tokens of
  the batch (the loss before 2026-12-07; ``distil=0`` now is close, but averages per term);
* ``kl``: the KL to the base on replay rows only (``replay_sft=0, distil=3``);
* ``sft+kl``: both, each term a mean over its own rows (the default).

    python studies/chat_replay_pilot.py [--steps 60] [--seed 0]     # ~6 min an arm on 2 cores

Results: ``docs/chat_replay_pilot.{json,md}``. One seed and one order of corrections: a
pilot to choose the loss, not a measurement of the loop (that is studies/chat_corrections.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("RI_SHARED_DATA", REPO.parent / "shared" / "data"))
OUT = REPO / "docs" / "chat_replay_pilot"

ARMS: dict[str, dict[str, Any]] = {
    "base (no training)": {},
    "sft": {"token_mean": True},  # replay rows go in as ordinary answers: one cross-entropy over every token
    "kl": {"distil": 3.0, "replay_sft": 0.0},
    "sft+kl": {"distil": 3.0, "replay_sft": 1.0},
}


def run_arm(name: str, steps: int, seed: int) -> dict[str, Any]:
    import pyarrow as pa
    import torch

    from ray_interactive.examples.chat_corrections import REPLAY, ChatCorrectionsTask

    settings = dict(ARMS[name])
    token_mean = settings.pop("token_mean", False)
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    task = ChatCorrectionsTask(wikitext_dir=str(DATA / "wikitext-2"), seed=seed, **settings)
    model = task.build_model()
    model.train()
    opt = task.build_optimizer(model, 1e-3)
    replay = task.data_sources()[1].static_table()
    assert replay is not None
    rng = random.Random(seed)
    pool: list[tuple[str, str]] = []
    used: set[int] = set()
    t0 = time.time()
    for step in range(0 if name.startswith("base") else steps):
        if step % 4 == 0 and step // 4 < len(task.kb.facts):
            fact = task.kb.facts[step // 4]
            pool.extend((q, fact.answer) for q in fact.asked)
        fresh = [i for i in range(len(pool)) if i not in used][-4:]
        fresh += [rng.randrange(len(pool)) for _ in range(4 - len(fresh))]
        used.update(fresh)
        picks = [rng.randrange(replay.num_rows) for _ in range(4)]
        rows = pa.table({
            "prompt": [pool[i][0] for i in fresh] + [replay.column("prompt")[i].as_py() for i in picks],
            "response": [pool[i][1] for i in fresh] + [replay.column("response")[i].as_py() for i in picks],
            "kind": ["correction"] * 4 + ["plain" if token_mean else REPLAY] * 4,  # "plain": one token mean, as before
        })
        loss, _ = task.loss(model, task.collate(rows, torch.device("cpu")))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        print(f"{name}: step {step + 1}/{steps}", end="\r", flush=True)
    figures = task.evaluate(model, torch.device("cpu"))
    print(f"{name}: {figures} in {time.time() - t0:.0f} s", flush=True)
    return {"arm": name, "settings": ARMS[name], "steps": steps, "seed": seed, **figures,
            "seconds": round(time.time() - t0)}


def report(doc: dict[str, Any]) -> str:
    lines = [
        "# Which replay loss keeps the chat model's general ability? (pilot, issue 26)",
        "",
        f"{doc['date']}, commit {doc['commit']}, {doc['load']}. `python studies/chat_replay_pilot.py --steps "
        f"{doc['steps']} --seed {doc['seed']}`: one seed, one order of corrections (fact k's four wordings arrive at "
        "step 4k), batch 4 corrections + 4 replay rows, lr 1e-3; evaluated as the run evaluates. A pilot to choose "
        "the loss; the loop itself is measured by `studies/chat_corrections.py`.",
        "",
        "| arm | held-out wordings right | general questions right | WikiText-2 ppl |",
        "|---|---|---|---|",
    ]
    for r in doc["arms"]:
        lines.append(f"| {r['arm']} | {100 * r['kb_accuracy']:.0f}% | {100 * r['general_accuracy']:.0f}% "
                     f"| {r['wikitext_ppl']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    a = ap.parse_args()
    if not 1 <= a.steps <= 10_000:
        ap.error("--steps must be 1..10000")
    one, five, _ = os.getloadavg()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    doc = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit, "steps": a.steps,
           "seed": a.seed, "load": f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs before",
           "arms": []}
    for arm in a.arms:
        doc["arms"].append(run_arm(arm, a.steps, a.seed))
        OUT.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    OUT.with_suffix(".md").write_text(report(doc))
    print(report(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
