"""The HTTP API's requests and responses: OpenAI's completions format, plus jrtc's JRT-Prompt fields.

Field names, defaults and the server-sent event chunks follow OpenAI's legacy completions API
(https://platform.openai.com/docs/api-reference/completions), so the official ``openai`` client works
unchanged. jrtc adds ``top_k``, ``question``, ``repeat`` and ``pad`` (``jrtc run``'s options) and, as vLLM
does, ``return_token_ids`` for the generated ids.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from jrtc.errors import JrtcError
from jrtc.runtime.prompt import Prompt, build_prompt
from jrtc.runtime.sampling import SamplingParams

# OpenAI's defaults for the fields a client leaves out (or sends as null).
DEFAULT_MAX_TOKENS = 16
DEFAULT_TEMPERATURE = 1.0
# jrtc's finish reasons in OpenAI's words: both an end-of-sequence token and a stop string are "stop".
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class CompletionRequest(BaseModel):
    """``POST /v1/completions``. Unknown fields (and OpenAI's that jrtc lacks, like ``logprobs``) are a 400."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None  # any name: the server has one engine
    prompt: str | list[str] | list[int]  # a text, a list of one text, or token ids
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    seed: int | None = Field(None, ge=0)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)
    user: str | None = None
    # JRT-Prompt: with a question, the prompt is the context (see jrtc.runtime.prompt.build_prompt).
    question: str | None = None
    repeat: int | None = Field(None, ge=1)
    pad: str = "left"  # "left" or "read2x", checked by build_prompt
    return_token_ids: bool = False

    def sampling_params(self) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return SamplingParams(
            temperature=DEFAULT_TEMPERATURE if self.temperature is None else self.temperature,
            top_k=self.top_k or 0,
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.seed,
            max_new_tokens=self.max_tokens or DEFAULT_MAX_TOKENS,
            stop=tuple(stop),
        )

    def engine_prompt(self) -> Prompt | list[int]:
        """What the session tokenizes: a built JRT-Prompt from text, or the token ids as given."""
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise JrtcError(f"prompt: one prompt per request, got a list of {len(prompt)}")
            prompt = prompt[0]
        if isinstance(prompt, str):
            return build_prompt(prompt, self.question, self.repeat, self.pad)
        if self.question is not None or self.repeat is not None or self.pad != "left":
            raise JrtcError("question, repeat and pad need a text prompt, not token ids")
        return prompt


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None
    token_ids: list[int] | None = None  # only when the request asked for them

    @model_serializer(mode="wrap")
    def _omit_unrequested_ids(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data["token_ids"] is None:
            del data["token_ids"]
        return data


class Completion(BaseModel):
    """A whole completion, or (streamed) one chunk of it: then ``choices`` holds the new text only."""

    id: str = Field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error body; the ``openai`` client raises it as ``BadRequestError`` etc. with the message."""

    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "jrtc"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
