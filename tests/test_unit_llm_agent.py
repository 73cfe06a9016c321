"""The LLM agent's client, reply checks and local server over real HTTP (no Ray).

The scripted backend stands in for a remote model (it ignores ``guided_choice``, as a
server without it would); the scoring backend runs a real transformers model - a tiny
GPT-2 built from a config with GPT-2's tokenizer, so it takes a second, not the 135M model
(that one is in the slow test of test_agents.py)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ray_interactive.agents.llm import (
    ACTIONS,
    ChatClient,
    LLMPolicy,
    ReplyError,
    build_messages,
    parse_reply,
    tries,
)
from ray_interactive.agents.llm_server import LocalServer, ScriptedBackend, TransformersBackend
from ray_interactive.agents.runtime import Observation

from .conftest import SHARED_DATA


def obs(**kw: Any) -> Observation:
    base: dict[str, Any] = dict(
        step=400, status="running", branch="main", lr=0.005, loss=[5.0, 4.1, 5.2, 4.0, 5.1] * 6,
        loss_steps=list(range(10, 310, 10)), eval_loss=[5.3, 5.1, 5.2], paused_by=None,
        checkpoints=[{"id": "main@200", "branch": "main", "finite": True}], own_actions=[],
        lr_history=[0.005] * 30,
    )
    base.update(kw)
    return Observation(**base)


def test_the_prompt_carries_the_papers_parts() -> None:
    [system, user] = build_messages(obs(), ("same", "half", "double"), "GPT-2 on WikiText-2")
    assert system["role"] == "system" and "JSON" in system["content"]
    text = user["content"]
    for part in ("Task: GPT-2 on WikiText-2", "Current step: 400", "Current learning rate: 0.005",
                 "Learning rate history:", "Training loss history: 5, 4.1, 5.2", "Validation loss history: 5.3, 5.1, 5.2",
                 "- half: halve the learning rate", '"action": one of same, half, double'):
        assert part in text, part
    loss_line = next(x for x in text.splitlines() if x.startswith("Training loss history:"))
    assert loss_line.count(",") == 19  # histories are cut to the last 20 points each


@pytest.mark.parametrize("reply,action", [
    ("half", "half"),
    ('{"action": "double", "explanation": "loss falls slowly"}', "double"),
    ('Sure!\n```json\n{"action": "Same", "explanation": "fine"}\n```', "same"),
])
def test_replies_that_parse(reply: str, action: str) -> None:
    assert parse_reply(reply, ("same", "half", "double"))[0] == action


@pytest.mark.parametrize("reply,why", [
    ("I would lower it a bit.", "not JSON"),
    ('{"action": "half", ', "not JSON"),
    ('{"action": "triple", "explanation": "faster"}', "names action 'triple'"),
    ('{"action": 3}', "names action 3"),
    ('["half"]', "not JSON"),
])
def test_replies_that_are_refused(reply: str, why: str) -> None:
    with pytest.raises(ReplyError, match=why):
        parse_reply(reply, ("same", "half", "double"))


def test_the_policy_over_http_acts_on_a_good_reply_and_refuses_bad_ones() -> None:
    backend = ScriptedBackend([
        '{"action": "half", "explanation": "the loss oscillates"}',
        "lower the learning rate",  # not JSON
        '{"action": "stop_training", "explanation": "done"}',  # not an allowed action
        '{"action": "reload_and_half", "explanation": "it blew up"}',
    ])
    with LocalServer(backend) as server:
        policy = LLMPolicy(ChatClient(server.url, model="m", api_key="k"))
        good = policy.decide(obs())
        assert good.commands == [{"kind": "update_optimizer", "params": {"lr": 0.0025}}]
        assert good.rationale == "half: the loss oscillates" and good.finding["action"] == "half"
        for why in ("not JSON", "names action 'stop_training'"):
            bad = policy.decide(obs())
            assert bad.commands == [] and why in bad.rationale and bad.finding["refused"]
        reload = policy.decide(obs())
        assert [c["kind"] for c in reload.commands] == ["load_checkpoint", "update_optimizer"]
        assert reload.commands[0]["checkpoint_id"] == "main@200"
    sent = backend.requests[0]
    assert sent["guided_choice"] == ["same", "half", "double", "reload_and_half"]
    assert sent["messages"][1]["content"].startswith("Task: train a language model")


def test_the_server_validates_requests_and_the_client_reports_http_errors() -> None:
    with LocalServer(ScriptedBackend(["same"])) as server:
        r = httpx.post(f"{server.url}/chat/completions", json={"messages": []})
        assert r.status_code == 422
        assert httpx.get(f"{server.url}/models").json()["data"][0]["id"] == "scripted"
        with pytest.raises(ReplyError, match="HTTP 404"):
            ChatClient(server.url.replace("/v1", "/nope")).complete([{"role": "user", "content": "hi"}])
    with pytest.raises(ValueError, match="no LLM endpoint"):
        ChatClient(base_url="", api_key="")
    with pytest.raises(ValueError, match="unknown actions"):
        LLMPolicy(ChatClient("http://127.0.0.1:1/v1"), actions=("same", "yolo"))


def test_guided_choice_scores_every_allowed_answer_with_a_real_model() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    tok = GPT2Tokenizer(str(SHARED_DATA / "gpt2-tokenizer" / "vocab.json"),
                        str(SHARED_DATA / "gpt2-tokenizer" / "merges.txt"))
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=1, n_embd=32, n_head=2, n_positions=1024))
    with LocalServer(TransformersBackend(model, tok, "tiny-gpt2")) as server:
        policy = LLMPolicy(ChatClient(server.url), actions=tuple(ACTIONS))
        d = policy.decide(obs())
        scores = d.finding["scores"]
        assert set(scores) == set(ACTIONS) and all(s < 0 for s in scores.values())
        assert d.finding["action"] == max(scores, key=scores.get)
        assert "log-probability" in d.rationale and d.finding["model"] == "tiny-gpt2"
        free = ChatClient(server.url).complete([{"role": "user", "content": "hello"}], max_tokens=3)
        assert isinstance(free["choices"][0]["message"]["content"], str) and "choice_scores" not in free


def test_nothing_is_asked_while_the_run_is_paused() -> None:
    policy = LLMPolicy(ChatClient("http://127.0.0.1:1/v1"))  # nothing listens there: it must not be called
    assert policy.decide(obs(status="paused")).commands == []


def test_per_module_health_reaches_the_prompt_when_sampled() -> None:
    [_, user] = build_messages(obs(health={"health/transformer.h.0/update_ratio": 0.031,
                                           "health/transformer.h.0/dead": 0.2}), ("same", "half"), "t")
    assert "Update-to-weight ratio per module (newest sample): transformer.h.0 0.031" in user["content"]
    [_, bare] = build_messages(obs(), ("same", "half"), "t")
    assert "Update-to-weight" not in bare["content"]


def test_a_checked_policy_proposes_its_moves_as_trials_with_the_ones_it_asks_to_try() -> None:
    backend = ScriptedBackend([
        '{"action": "half", "explanation": "noisy", "try": ["double", "stop_training", "half"]}',
        '{"action": "same", "explanation": "fine"}',
        "half",  # a constrained reply: the bare action, nothing more to try
    ])
    with LocalServer(backend) as server:
        policy = LLMPolicy(ChatClient(server.url), check=True)
        first = policy.decide(obs())
        assert [t["name"] for t in first.trials] == ["half", "double"]  # unknown and repeated ones dropped
        assert first.trials[1]["commands"] == [{"kind": "update_optimizer", "params": {"lr": 0.01}}]
        assert first.commands == [{"kind": "update_optimizer", "params": {"lr": 0.0025}}]  # if nothing tests them
        assert first.finding["try"] == ["half", "double"]
        assert policy.decide(obs()).trials == []  # "same": nothing to test
        assert [t["name"] for t in policy.decide(obs()).trials] == ["half"]
    assert "tried on a short branch" in backend.requests[0]["messages"][1]["content"]
    assert "tried on a short branch" not in build_messages(obs(), ("same", "half"), "t")[1]["content"]
    assert tries('{"action": "same", "try": "half"}', ("same", "half")) == []  # not a list
    assert tries("no json here", ("same",)) == []
