"""A small GPT-2 language model on WikiText-2 (or any text files), built from a config.

No download: the model is ``GPT2LMHeadModel(GPT2Config(...))`` at a size a CPU trains in
minutes, and the text comes from a local directory holding ``wiki.train.tokens`` and
``wiki.valid.tokens`` (WikiText-2's files). Tokens are bytes (vocabulary 256) unless
``tokenizer_dir`` points at GPT-2's ``vocab.json``/``merges.txt``. Without ``data_dir``
a small generated corpus stands in, so the example runs anywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from ray_interactive.core.task import DataSource, Task, column_array

log = logging.getLogger(__name__)


def generated_corpus(chars: int = 400_000, seed: int = 0) -> str:
    """Deterministic pseudo-English for when no data directory is given."""
    rng = np.random.default_rng(seed)
    subjects = ["the model", "a person", "the agent", "the trainer", "our run", "the loss", "a branch"]
    verbs = ["lowers", "watches", "saves", "loads", "changes", "steers", "pauses", "resumes"]
    objects = ["the learning rate", "a checkpoint", "the data mixture", "its gradients", "the schedule"]
    parts, n = [], 0
    while n < chars:
        s = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} . "
        parts.append(s.capitalize() if rng.random() < 0.3 else s)
        n += len(s)
    return "".join(parts)


class TinyLMTask(Task):
    """Next-token prediction with a small GPT-2 on windows of ``context`` tokens."""

    def __init__(
        self,
        data_dir: str | None = None,
        tokenizer_dir: str | None = None,
        context: int = 64,
        n_layer: int = 2,
        n_embd: int = 128,
        n_head: int = 4,
        dropout: float = 0.1,
        max_train_tokens: int | None = 2_000_000,
        eval_tokens: int = 16_384,
    ) -> None:
        if data_dir is not None and not (Path(data_dir) / "wiki.train.tokens").exists():
            raise ValueError(f"{data_dir} has no wiki.train.tokens (give the WikiText-2 directory)")
        if tokenizer_dir is not None and not (Path(tokenizer_dir) / "vocab.json").exists():
            raise ValueError(f"{tokenizer_dir} has no vocab.json (give the GPT-2 tokenizer directory)")
        self.data_dir, self.tokenizer_dir = data_dir, tokenizer_dir
        self.context, self.n_layer, self.n_embd, self.n_head, self.dropout = context, n_layer, n_embd, n_head, dropout
        self.max_train_tokens, self.eval_tokens = max_train_tokens, eval_tokens
        self._tokenizer = None
        self._eval_windows: pa.Table | None = None

    @property
    def vocab_size(self) -> int:
        return 256 if self.tokenizer_dir is None else 50257

    def _encode(self, text: str) -> np.ndarray:
        if self.tokenizer_dir is None:
            return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)
        if self._tokenizer is None:
            from transformers import GPT2TokenizerFast

            self._tokenizer = GPT2TokenizerFast.from_pretrained(self.tokenizer_dir)
        return np.asarray(self._tokenizer(text)["input_ids"], dtype=np.int32)

    def _text(self, split: str) -> str:
        if self.data_dir is None:
            return generated_corpus(seed=0 if split == "train" else 1)
        return (Path(self.data_dir) / f"wiki.{split}.tokens").read_text(encoding="utf-8")

    def _windows(self, tokens: np.ndarray) -> pa.Table:
        w = self.context + 1
        n = len(tokens) // w
        flat = pa.array(tokens[: n * w], type=pa.int32())
        return pa.table({"tokens": pa.FixedSizeListArray.from_arrays(flat, w)})

    def build_model(self) -> nn.Module:
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(
            vocab_size=self.vocab_size,
            n_positions=self.context,
            n_embd=self.n_embd,
            n_layer=self.n_layer,
            n_head=self.n_head,
            resid_pdrop=self.dropout,
            embd_pdrop=self.dropout,
            attn_pdrop=self.dropout,
            bos_token_id=self.vocab_size - 1,
            eos_token_id=self.vocab_size - 1,
        )
        return GPT2LMHeadModel(cfg)

    def data_sources(self) -> list[DataSource]:
        text = self._text("train")
        if self.max_train_tokens is not None and self.tokenizer_dir is None:
            text = text[: self.max_train_tokens]
        tokens = self._encode(text)
        if self.max_train_tokens is not None:
            tokens = tokens[: self.max_train_tokens]
        log.info("tiny-lm: %d training tokens", len(tokens))
        return [DataSource("text", self._windows(tokens), policy="epoch")]

    def collate(self, batch: pa.Table, device: torch.device) -> torch.Tensor:
        return torch.from_numpy(column_array(batch, "tokens", np.int64)).to(device)

    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=batch[:, :-1]).logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        if self._eval_windows is None:  # the same fixed slice of the validation text each time
            tokens = self._encode(self._text("valid")[: self.eval_tokens * 8])[: self.eval_tokens]
            self._eval_windows = self._windows(tokens)
        windows = self.collate(self._eval_windows, device)
        losses = [self.loss(model, windows[i : i + 32]).item() for i in range(0, len(windows), 32)]
        loss = float(np.mean(losses))
        return {"loss": loss, "perplexity": float(np.exp(min(loss, 30.0)))}
