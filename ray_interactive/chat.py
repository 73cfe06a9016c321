"""The chat model that learns from its users' corrections, for apps: ``ri.chat.*``.

The task (:mod:`ray_interactive.examples.chat_corrections`), the deployed chat's logic
(:mod:`ray_interactive.examples.chat_engine`) and the product's knowledge base, under one
public name (apps use only the public API).
"""

from __future__ import annotations

from ray_interactive.examples.chat_corrections import (
    EXCHANGES,
    FEEDBACK,
    REPLAY,
    ROLLOUT,
    ChatCorrectionsTask,
    KnowledgeBase,
    answer,
    build_chat_model,
    is_right,
    judge_evaluation,
    load_tokenizer,
)
from ray_interactive.examples.chat_engine import ChatEngine, Exchange

TASK = "ray_interactive.examples.chat_corrections:ChatCorrectionsTask"

__all__ = [
    "EXCHANGES", "FEEDBACK", "REPLAY", "ROLLOUT", "TASK", "ChatCorrectionsTask", "ChatEngine", "Exchange",
    "KnowledgeBase", "answer", "build_chat_model", "is_right", "judge_evaluation", "load_tokenizer",
]
