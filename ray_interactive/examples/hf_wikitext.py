"""A tiny GPT-2 on WikiText-2 under Hugging Face's ``Trainer``, steered by ray_interactive.

    python -m ray_interactive.examples.hf_wikitext --data ../shared/data --run hf-demo

No download: the model is ``GPT2LMHeadModel(GPT2Config(...))`` and the tokenizer and text
come from ``--data`` (``gpt2-tokenizer/`` and ``wikitext-2/``). Tests and benchmarks build
the same Trainer with :func:`build_trainer`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast, Trainer, TrainingArguments


class TokenBlocks(torch.utils.data.Dataset):
    """Fixed-length blocks of GPT-2 tokens from the start of a WikiText-2 file."""

    def __init__(self, ids: torch.Tensor, block: int) -> None:
        n = len(ids) // block
        self.blocks = ids[: n * block].view(n, block)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}


def load_blocks(data: Path, split: str, max_chars: int, block: int) -> TokenBlocks:
    tokenizer = GPT2TokenizerFast.from_pretrained(str(data / "gpt2-tokenizer"))
    path = data / "wikitext-2" / f"wiki.{split}.tokens"
    if not path.exists():
        raise ValueError(f"{path} does not exist: --data must hold wikitext-2/ and gpt2-tokenizer/")
    text = path.read_text(encoding="utf-8")[:max_chars]
    return TokenBlocks(torch.tensor(tokenizer(text)["input_ids"]), block)


def build_trainer(
    data: str | Path,
    output_dir: str | Path,
    *,
    max_steps: int = 200,
    lr: float = 1e-3,
    batch_size: int = 8,
    block: int = 64,
    n_layer: int = 2,
    n_embd: int = 64,
    train_chars: int = 400_000,
    eval_chars: int = 40_000,
    seed: int = 0,
    callbacks: list[Any] | None = None,
    report_to: str | list[str] = "none",
    **args: Any,
) -> Trainer:
    """A Trainer with a linear-decay schedule on a small GPT-2 (CPU-sized); ``report_to``: HF's own trackers."""
    data = Path(data)
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=2, n_positions=block, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)
    training = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        learning_rate=lr,
        lr_scheduler_type="linear",
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to=report_to,
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=True,
        **args,
    )
    return Trainer(
        model=model,
        args=training,
        train_dataset=load_blocks(data, "train", train_chars, block),
        eval_dataset=load_blocks(data, "valid", eval_chars, block),
        callbacks=callbacks,
    )


def main() -> None:
    import ray_interactive as ri

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="../shared/data", help="holds wikitext-2/ and gpt2-tokenizer/")
    p.add_argument("--run", default="hf-demo", help="the run's name (ray-interactive ui --run NAME)")
    p.add_argument("--max-steps", type=int, default=2000)
    p.add_argument("--output-dir", default="runs/hf-output")
    a = p.parse_args()
    trainer = build_trainer(a.data, a.output_dir, max_steps=a.max_steps)
    ri.hf.steer(trainer, run=a.run, checkpoint_every=200)
    trainer.train()


if __name__ == "__main__":
    main()
