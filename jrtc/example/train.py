"""Train the built-in example on the CPU: ``python -m jrtc.example.train [--steps N] [--out PATH]``.

Prompts are fed exactly as at inference (reference protocol): shorter than ``enc_length`` -> left-padded with
spaces, pads masked in PLA; the loss is next-token prediction on the answer and its newline only, which always
sit after the encoder region, so the non-causal encoder cannot leak them.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time

import torch
import torch.nn.functional as F

from jrtc.checkpoint import save_checkpoint
from jrtc.config import JRTConfig
from jrtc.example import CHECKPOINT, SETTINGS
from jrtc.example.recall_task import make_example
from jrtc.model import JRTModel


def encode(text: str) -> list[int]:
    return list(text.encode())


def make_batch(
    rng: random.Random, task: dict, batch_size: int, enc_length: int, pad_id: int, twice_fraction: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows ``[spaces | prompt | answer \\n]`` with the prompt left-padded to ``enc_length`` exactly (the task
    settings keep every prompt, read twice included, within it); returns ids, pad mask and targets (-100 = none)."""
    ids, mask, targets = [], [], []
    for _ in range(batch_size):
        ex = make_example(rng, **task)
        prompt = encode(ex.prompt(read_twice=rng.random() < twice_fraction))
        answer = encode(ex.answer + "\n")
        pads = enc_length - len(prompt)
        assert pads >= 0, "task settings make prompts longer than enc_length"
        ids.append([pad_id] * pads + prompt + answer)
        mask.append([False] * pads + [True] * (len(prompt) + len(answer)))
        targets.append([-100] * (enc_length - 1) + answer + [-100])
    return torch.tensor(ids), torch.tensor(mask), torch.tensor(targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, help="override settings.json train.steps")
    parser.add_argument("--out", default=str(CHECKPOINT))
    args = parser.parse_args()
    settings = json.loads(SETTINGS.read_text())
    train = settings["train"]
    steps = args.steps or train["steps"]
    torch.manual_seed(train["seed"])
    torch.set_num_threads(train["threads"])
    rng = random.Random(train["seed"])
    config = JRTConfig.from_dict(settings["model"])
    model = JRTModel(config)
    for name, p in model.named_parameters():
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.02 if "embeddings" in name else 1 / math.sqrt(p.shape[1]))
    opt = torch.optim.AdamW(model.parameters(), lr=train["lr"], weight_decay=train["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / train["warmup"]) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    t0 = time.time()
    for step in range(steps):
        ids, mask, targets = make_batch(
            rng,
            settings["task"],
            train["batch_size"],
            config.enc_length,
            config.pad_token_id,
            train["read_twice_fraction"],
        )
        logits = model(ids, mask)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            print(
                f"step {step:5d}  loss {loss.item():.4f}  {time.time() - t0:6.0f}s",
                file=sys.stderr,
                flush=True,
            )
    save_checkpoint(model.eval(), args.out)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
