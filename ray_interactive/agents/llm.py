"""The LLM agent: a language model behind the OpenAI chat-completions protocol picks an action.

The prompt is the paper's (case study 2): the task, the current step and lr, the histories
of lr, training loss and validation loss (about 20 points each), the allowed actions, and a
JSON answer ``{"action": ..., "explanation": ...}``. Any server that speaks the protocol
works (``base_url``, ``model``, key from ``OPENAI_API_KEY``); the default is the small
local model served by :mod:`ray_interactive.agents.llm_server`.

A small model's free-form JSON is unreliable, so with ``constrain=True`` the request also
carries ``guided_choice`` (vLLM's name for it; our local server implements it by scoring
each allowed answer with one forward pass): the reply is then always one of the actions.
Either way the reply is parsed here and a reply that is not JSON, or names an action that
is not allowed, is refused and journalled - it never becomes a command. The guardrails
then check what the chosen action would send, as for any policy, and an action that cannot
be carried out in full (``reload_and_half`` with no checkpoint to reload) is skipped whole.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from ray_interactive.agents.runtime import Decision, Observation, update_ratios

#: Points of each history the prompt shows (the paper's agent saw about 20).
PROMPT_POINTS = 20


@dataclass(frozen=True)
class Action:
    """One answer the model may give, and what it does to the run."""

    name: str
    meaning: str
    commands: Callable[[Observation], list[dict[str, Any]]]


def _lr_times(factor: float) -> Callable[[Observation], list[dict[str, Any]]]:
    def make(obs: Observation) -> list[dict[str, Any]]:
        return [] if obs.lr is None else [{"kind": "update_optimizer", "params": {"lr": obs.lr * factor}}]
    return make


def _reload_and_half(obs: Observation) -> list[dict[str, Any]]:
    good = [c for c in obs.checkpoints if c.get("finite", True) and c.get("branch") == obs.branch]
    # with nothing to reload the load stays in, without an id: the runtime's screen then skips
    # the whole decision and says why (halving alone is not what the model chose)
    load = {"kind": "load_checkpoint", "checkpoint_id": good[-1]["id"] if good else None}
    return [load, *_lr_times(0.5)(obs)]


#: Every action an LLM agent may be offered; the paper's three are ``double``, ``half``, ``same``.
ACTIONS: dict[str, Action] = {a.name: a for a in (
    Action("same", "keep the learning rate", lambda obs: []),
    Action("half", "halve the learning rate", _lr_times(0.5)),
    Action("double", "double the learning rate", _lr_times(2.0)),
    Action("reload_and_half", "go back to the last checkpoint and halve the learning rate (for a loss that blew up)",
           _reload_and_half),
    Action("clip", "clip gradients to norm 1.0", lambda obs: [{"kind": "set_grad_clip", "max_norm": 1.0}]),
    Action("checkpoint", "save a checkpoint of the current weights", lambda obs: [{"kind": "save_checkpoint"}]),
)}
#: Offered by default: the paper's three answers plus a way back from a blow-up.
DEFAULT_ACTIONS = ("same", "half", "double", "reload_and_half")


class ReplyError(ValueError):
    """A model's reply that cannot become a decision (not JSON, unknown action)."""


def _series(values: Sequence[float | None]) -> str:
    tail = list(values)[-PROMPT_POINTS:]
    return ", ".join("nan" if v is None or not math.isfinite(v) else f"{v:.4g}" for v in tail) or "(none yet)"


def _health(health: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in sorted(update_ratios(health).items())[:12])


def build_messages(obs: Observation, actions: Sequence[str], task: str, check: bool = False) -> list[dict[str, str]]:
    """The paper's prompt: task, step and lr, the histories, the allowed actions, a JSON answer.
    ``check``: the model is told its choice is tested before it is kept, and may list more to test."""
    menu = "\n".join(f"- {name}: {ACTIONS[name].meaning}" for name in actions)
    system = ("You are an expert in training neural networks. You watch a training run and decide how to change "
              "its learning rate. You answer with JSON only.")
    health = _health(obs.health)
    user = (
        f"Task: {task}\n"
        f"Current step: {obs.step}. Current learning rate: {obs.lr if obs.lr is not None else 'unknown'}.\n"
        f"Learning rate history: {_series(obs.lr_history)}\n"
        f"Training loss history: {_series(obs.loss)}\n"
        f"Validation loss history: {_series(obs.eval_loss)}\n"
        + (f"Update-to-weight ratio per module (newest sample): {health}\n" if health else "")
        + f"Actions:\n{menu}\n"
        f'Answer as JSON: {{"action": one of {", ".join(actions)}, "explanation": a short reason}}.'
        + ("\nYour action is first tried on a short branch against keeping the run as it is, and kept only if "
           'it does better; to have other actions tried too, add "try": [a few of the actions].' if check else "")
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def parse_reply(text: str, actions: Sequence[str]) -> tuple[str, str]:
    """(action, explanation) from a reply; :class:`ReplyError` says why it cannot be used."""
    stripped = text.strip()
    if stripped in actions:  # a constrained reply is the bare action name
        return stripped, ""
    found = re.search(r"\{.*\}", stripped, re.DOTALL)  # models like to wrap JSON in prose or fences
    if found is None:
        raise ReplyError(f"the reply is not JSON: {stripped[:200]!r}")
    try:
        answer = json.loads(found.group(0))
    except json.JSONDecodeError as e:
        raise ReplyError(f"the reply is not valid JSON ({e.msg}): {stripped[:200]!r}") from None
    if not isinstance(answer, dict):
        raise ReplyError(f"the reply is JSON but not an object: {stripped[:200]!r}")
    action = answer.get("action")
    if not isinstance(action, str) or action.strip().lower() not in actions:
        raise ReplyError(f"the reply names action {action!r}, not one of {', '.join(actions)}")
    explanation = answer.get("explanation", "")
    return action.strip().lower(), str(explanation)[:500]


class ChatClient:
    """A minimal OpenAI chat-completions client (``POST {base_url}/chat/completions``)."""

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 timeout_s: float = 120.0) -> None:
        base = base_url or os.environ.get("OPENAI_BASE_URL")
        if not base:
            raise ValueError("no LLM endpoint: give a base URL (--llm-url) or set OPENAI_BASE_URL")
        self.base_url = base.rstrip("/")
        self.model = model or os.environ.get("RAY_INTERACTIVE_LLM_MODEL") or "default"
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(timeout=timeout_s, headers=headers)

    def complete(self, messages: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
        """The whole response body; raises on an HTTP error or a body without a message."""
        r = self._http.post(f"{self.base_url}/chat/completions",
                            json={"model": self.model, "messages": messages, "temperature": 0, **extra})
        if r.status_code != 200:
            raise ReplyError(f"the LLM endpoint answered HTTP {r.status_code}: {r.text[:300]}")
        body = r.json()
        try:
            body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ReplyError(f"the LLM endpoint's answer has no message: {str(body)[:300]}") from None
        return body

    def close(self) -> None:
        self._http.close()


class LLMPolicy:
    """Asks a chat model for one of ``actions`` each tick; the reply's action becomes commands."""

    name = "llm"

    def __init__(self, client: ChatClient, actions: Sequence[str] = DEFAULT_ACTIONS, constrain: bool = True,
                 task: str = "train a language model; lower validation loss is better", max_tokens: int = 96,
                 check: bool = False) -> None:
        unknown = [a for a in actions if a not in ACTIONS]
        if unknown or not actions:
            raise ValueError(f"unknown actions {unknown}; choose from {', '.join(ACTIONS)}")
        self.client, self.actions, self.constrain, self.task = client, tuple(actions), constrain, task
        self.max_tokens = max_tokens
        # check: the chosen action (and any the reply lists under "try") is proposed as a trial
        # for a lookahead to test against keeping things as they are, not applied blind
        self.check = check

    def decide(self, obs: Observation) -> Decision:
        if obs.status != "running" or obs.lr is None:
            return Decision(rationale=f"nothing to do while the run is {obs.status}")
        extra: dict[str, Any] = {"max_tokens": self.max_tokens}
        if self.constrain:
            extra["guided_choice"] = list(self.actions)
        body = self.client.complete(build_messages(obs, self.actions, self.task, self.check), **extra)
        text = body["choices"][0]["message"]["content"] or ""
        finding: dict[str, Any] = {"reply": text[:500], "model": body.get("model")}
        if "choice_scores" in body:
            finding["scores"] = body["choice_scores"]
        try:
            action, explanation = parse_reply(text, self.actions)
        except ReplyError as e:
            return Decision(rationale=f"refused the model's reply: {e}", finding={**finding, "refused": str(e)})
        finding["action"] = action
        why = explanation or _scores_text(finding.get("scores"))
        commands = ACTIONS[action].commands(obs)
        rationale = f"{action}: {why}" if why else action
        if not self.check:
            return Decision(commands, rationale, finding)
        names = [action, *[a for a in tries(text, self.actions) if a != action]]
        trials = [{"name": a, "commands": ACTIONS[a].commands(obs)} for a in names if a != "same"]
        if trials:
            finding["try"] = [t["name"] for t in trials]
        return Decision(commands, rationale, finding, trials=trials)


def tries(text: str, actions: Sequence[str]) -> list[str]:
    """The actions a JSON reply asks to have tested (``"try": [...]``), those allowed only."""
    found = re.search(r"\{.*\}", text, re.DOTALL)
    try:
        answer = json.loads(found.group(0)) if found else None
    except ValueError:
        return []
    listed = answer.get("try") if isinstance(answer, dict) else None
    if not isinstance(listed, list):
        return []
    return [a.strip().lower() for a in listed if isinstance(a, str) and a.strip().lower() in actions][:4]


def _scores_text(scores: dict[str, float] | None) -> str:
    if not scores:
        return ""
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    return "the model's log-probability of each answer: " + ", ".join(f"{k} {v:.2f}" for k, v in ranked)


__all__ = ["ACTIONS", "DEFAULT_ACTIONS", "Action", "ChatClient", "LLMPolicy", "ReplyError", "build_messages",
           "parse_reply", "tries"]
