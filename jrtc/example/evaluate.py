"""Recall accuracy of the built-in example, context read once and read twice (JRT-Prompt):
``python -m jrtc.example.evaluate [--checkpoint PATH] [--examples N]``.

Prompts are fed by the reference protocol (left-padded with spaces to ``enc_length`` and masked), then decoded
greedily until a newline; an answer counts when it equals the value stored under the queried key.
"""

from __future__ import annotations

import argparse
import json
import random

import torch

from jrtc.checkpoint import load_checkpoint
from jrtc.example import CHECKPOINT, SETTINGS
from jrtc.example.recall_task import make_example
from jrtc.model import JRTModel

NEWLINE = ord("\n")


@torch.no_grad()
def greedy_answers(model: JRTModel, prompts: list[bytes], max_new_tokens: int) -> list[bytes]:
    cfg = model.config
    width = cfg.enc_length  # the task keeps every prompt within it, so one padded batch holds them all
    ids = torch.full((len(prompts), width), cfg.pad_token_id)
    mask = torch.zeros(len(prompts), width, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        assert len(prompt) <= width, "prompt longer than enc_length"
        ids[row, width - len(prompt) :] = torch.tensor(list(prompt))
        mask[row, width - len(prompt) :] = True
    state = model.init_state(len(prompts))
    logits = model.prefill(ids, state, mask)[:, -1]
    generated = []
    for _ in range(max_new_tokens):
        token = logits[:, : cfg.vocab_size].argmax(-1)
        generated.append(token)
        logits = model.step(token, state)
    rows = torch.stack(generated, 1).tolist()
    return [bytes(row[: row.index(NEWLINE)] if NEWLINE in row else row) for row in rows]


def evaluate(model: JRTModel, examples: int, seed: int) -> dict[str, float]:
    settings = json.loads(SETTINGS.read_text())
    rng = random.Random(seed)
    tasks = [make_example(rng, **settings["task"]) for _ in range(examples)]
    budget = settings["task"]["value_digits"] + 1
    accuracy = {}
    for name, twice in (("read_once", False), ("read_twice", True)):
        prompts = [t.prompt(read_twice=twice).encode() for t in tasks]
        answers = greedy_answers(model, prompts, budget)
        accuracy[name] = sum(a == t.answer.encode() for a, t in zip(answers, tasks, strict=True)) / examples
    return accuracy


def main() -> None:
    settings = json.loads(SETTINGS.read_text())
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", default=str(CHECKPOINT))
    parser.add_argument("--examples", type=int, default=settings["eval"]["examples"])
    parser.add_argument("--seed", type=int, default=settings["eval"]["seed"])
    args = parser.parse_args()
    result = evaluate(load_checkpoint(args.checkpoint), args.examples, args.seed)
    print(json.dumps({"checkpoint": args.checkpoint, "examples": args.examples, **result}))


if __name__ == "__main__":
    main()
