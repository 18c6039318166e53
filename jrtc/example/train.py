"""Train a built-in example: ``python -m jrtc.example.train {jrt,based} [--steps N] [--curve FILE] [--device D]``.

Both models learn the recall task of ``recall_task.py`` from the settings in ``settings.json``; they share
every setting but their linear-attention layers (JRT-RNN: prefix linear attention over an encoder of
``enc_length`` tokens; Based: causal linear attention, no encoder). A training row is the evaluation prompt
of its first query (read once, or read twice for a ``read_twice_fraction`` of rows) followed by the answer
and then every other key of the context as a further query, ``K:t\\n``: every answer is supervised
(multi-query associative recall), the keys asked are not. Prompts are fed as at inference: shorter than
``enc_length`` -> left-padded with masked spaces. Answers always sit after the encoder region, so the
non-causal encoder cannot see them. Contexts grow from a few pairs as the model learns
(:class:`Curriculum`). Training reads the PLA/LA layers through :func:`quadratic_attention` (the same
outputs, less work); the checkpoint is the plain model.

Train Based first: the JRT-RNN's settings start it from ``recall-based.pt`` (``init_from``, see
:func:`warm_start`), because from scratch it did not leave the plateau of answering any of the context's
values within 4,000 steps on the CPU (``benchmarks/results/example_training_notes.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from jrtc.checkpoint import load_checkpoint, save_checkpoint
from jrtc.config import JRTConfig
from jrtc.errors import JrtcError
from jrtc.example import EXAMPLE_DIR, SETTINGS
from jrtc.example.recall_task import RecallTask, load_settings, row
from jrtc.layers import PrefixLinearAttention
from jrtc.model import JRTModel
from jrtc.plugins.pla import naive
from jrtc.runtime.eval import item_from_row

IGNORE = -100


def model_settings(settings: dict[str, Any], name: str) -> tuple[JRTConfig, dict[str, Any], Path]:
    """The config, training settings and checkpoint path of model ``name`` (shared settings + its own)."""
    own = settings["models"][name]
    config = JRTConfig.from_dict({**settings["model"], **own["model"]})
    return config, {**settings["train"], **own.get("train", {})}, EXAMPLE_DIR / own["checkpoint"]


def _kernel(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``phi(q_l) . phi(k_m)`` for all l, m: ``[B, L, H, 16] x [B, M, H, 16] -> [B, H, L, M]``. The Taylor map's
    inner product is ``1 + s + s^2/2`` with ``s = q.k/4`` (``jrtc.plugins.pla.naive``)."""
    s = torch.einsum("blhd,bmhd->bhlm", q.float(), k.float()) / 4
    return 1 + s + 0.5 * s * s


def warm_start(model: JRTModel, checkpoint: Path) -> None:
    """Start ``model`` from another example's weights: every tensor of the same name; the encoder's
    projections, which a Based checkpoint lacks, are copies of the decoder's, so that the encoder starts by
    reading the prompt the way the decoder learnt to."""
    source = load_checkpoint(checkpoint).state_dict()
    weights = {}
    for name, tensor in model.state_dict().items():
        weights[name] = source.get(name, source.get(name.replace("_enc.", ".")))
        if weights[name] is None or weights[name].shape != tensor.shape:
            raise SystemExit(
                f"{checkpoint} cannot start this model: no tensor {name} of shape {list(tensor.shape)}"
            )
    model.load_state_dict(weights)


def quadratic_attention(
    self: PrefixLinearAttention,
    x: torch.Tensor,
    state: dict[str, torch.Tensor],
    pos: torch.Tensor,
    key_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``PrefixLinearAttention.forward`` for whole sequences from the empty state (training): the same
    outputs, from the kernel on the 16-dim projections instead of the 153 Taylor features (about 4x less
    work, forward and backward). The recurrent state is not computed (training never reads it)."""
    heads = self._heads
    q = heads(self.proj_q(x), self.feature_dim)
    k = naive._mask_keys(heads(self.proj_k(x), self.feature_dim), key_mask)
    length = x.shape[1]
    scores = _kernel(q, k).masked_fill(
        ~torch.ones(length, length, dtype=torch.bool, device=x.device).tril(), 0
    )
    numerator = torch.einsum("bhlm,bmhe->blhe", scores, heads(self.proj_v(x), self.head_dim).float())
    denominator = scores.sum(-1)
    if self.enc_length > 0:  # every position also reads the first enc_length tokens, non-causally
        k_enc = naive._mask_keys(heads(self.proj_k_enc(x), self.feature_dim), key_mask)
        inside = torch.arange(length, device=x.device) < self.enc_length
        enc_scores = _kernel(q, k_enc) * inside
        numerator = numerator + torch.einsum(
            "bhlm,bmhe->blhe", enc_scores, heads(self.proj_v_enc(x), self.head_dim).float()
        )
        denominator = denominator + enc_scores.sum(-1)
    o = numerator / (denominator.transpose(1, 2)[..., None] + naive.EPS)
    return self.out_proj(o.to(x.dtype).reshape(x.shape)), state


def use_quadratic_attention(model: JRTModel) -> None:
    """Train with :func:`quadratic_attention` in every PLA/LA layer (the checkpoint is unaffected)."""
    for block in model.transformer.layers:
        if isinstance(block.mixer, PrefixLinearAttention):
            block.mixer.forward = types.MethodType(quadratic_attention, block.mixer)


def training_row(
    rng: random.Random, task: RecallTask, twice: bool, queries: int, enc_length: int, pad_id: int
) -> tuple[list[int], list[int], int]:
    """``(ids, targets, pads)``: the prompt of the first query left-padded to ``enc_length``, then the answers
    to ``queries`` keys of the context (at most all of them).

    ``targets[i]`` is the token that must follow ``ids[i]`` (IGNORE where nothing is asked of the model).
    """
    pairs = task.draw_pairs(rng)
    order = rng.sample(pairs, len(pairs))
    prompt = item_from_row(row(pairs, order[0][0])).prompt(2 if twice else 1).text.encode()
    pads = max(enc_length - len(prompt), 0)
    ids = [pad_id] * pads + list(prompt)
    targets = [IGNORE] * (len(ids) - 1)
    for i, (key, value) in enumerate(order[:queries]):
        if i > 0:
            asked = list(f"{key}:".encode())
            ids += asked
            targets += [IGNORE] * len(asked)
        answer = list(f"{value}\n".encode())
        targets += answer  # the token after the prompt's last one, then the rest of the answer
        ids += answer
    return ids, targets + [IGNORE], pads


class Curriculum:
    """Training contexts hold from ``min_pairs`` pairs up to a maximum that starts at ``start_max_pairs`` and
    grows by one, up to the task's most, each time the answers of a logging window were right at least
    ``grow_at`` of the time. A model learns to bind keys to values (instead of answering any value of the
    context) on short contexts first: zoology trains MQAR on a mix of 4 to 64 pairs for the same reason."""

    def __init__(self, task: RecallTask, min_pairs: int, start_max_pairs: int, grow_at: float) -> None:
        self.final = task
        self.grow_at = grow_at
        self.task = dataclasses.replace(
            task, min_pairs=min(min_pairs, task.min_pairs), max_pairs=min(start_max_pairs, task.max_pairs)
        )

    def update(self, answer_accuracy: float) -> None:
        if answer_accuracy >= self.grow_at and self.task.max_pairs < self.final.max_pairs:
            self.task = dataclasses.replace(self.task, max_pairs=self.task.max_pairs + 1)


def make_batch(
    rng: random.Random, task: RecallTask, batch_size: int, queries: int, config: JRTConfig, twice: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows all read once or all read twice (so that short rows are not padded to long ones), right-padded
    to one length (harmless: causal, after every target) -> ids, mask, targets."""
    rows = [
        training_row(rng, task, twice, queries, config.enc_length, config.pad_token_id)
        for _ in range(batch_size)
    ]
    width = max(len(ids) for ids, _, _ in rows)
    ids = torch.full((batch_size, width), config.pad_token_id)
    mask = torch.zeros(batch_size, width, dtype=torch.bool)
    targets = torch.full((batch_size, width), IGNORE)
    for b, (row_ids, row_targets, pads) in enumerate(rows):
        ids[b, : len(row_ids)] = torch.tensor(row_ids)
        mask[b, pads : len(row_ids)] = True
        targets[b, : len(row_targets)] = torch.tensor(row_targets)
    return ids, mask, targets


def first_answer_right(predicted: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per row: did the model's argmax ``predicted`` get every token of the first answer right
    (teacher-forced)?"""
    first = (targets != IGNORE).int().argmax(1)  # where the first answer's first token is predicted
    span = first[:, None] + torch.arange(2, device=targets.device)  # the value's letter and its newline
    return (predicted.gather(1, span) == targets.gather(1, span)).all(1)


def answers_right(predicted: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """``(right, asked)``: the answers' value letters the model's argmax ``predicted`` gets right
    (teacher-forced)."""
    is_value = (targets != IGNORE) & (targets != ord("\n"))
    return int((predicted[is_value] == targets[is_value]).sum()), int(is_value.sum())


class StepRecord(NamedTuple):
    """What one training step logs, summed over a logging window."""

    loss: float
    first_right: torch.Tensor  # per row: the first answer right
    twice: bool  # the batch was read twice
    answers_right: int
    answers_asked: int


def _share(right: list[torch.Tensor]) -> float | None:
    return round(torch.cat(right).float().mean().item(), 3) if right else None


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON, atomically (a temporary file renamed into place)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def train(
    name: str,
    settings_file: Path,
    steps: int | None,
    out: Path | None,
    curve: Path | None,
    quiet: bool,
    device: str = "cpu",
) -> None:
    settings = load_settings(settings_file)
    config, train_cfg, checkpoint = model_settings(settings, name)
    out = out or checkpoint
    task = RecallTask(**settings["task"])
    curriculum = Curriculum(task, train_cfg["min_pairs"], train_cfg["start_max_pairs"], train_cfg["grow_at"])
    steps = steps or train_cfg["steps"]
    torch.set_flush_denormal(True)  # tiny gradients turn subnormal and make CPU matmuls ~100x slower
    torch.set_num_threads(train_cfg["threads"])
    torch.manual_seed(train_cfg["seed"])
    rng = random.Random(train_cfg["seed"])
    model = JRTModel(config)
    for pname, p in model.named_parameters():
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.02 if "embeddings" in pname else 1 / math.sqrt(p.shape[1]))
    if train_cfg.get("init_from"):
        warm_start(model, EXAMPLE_DIR / train_cfg["init_from"])
    model.to(device)  # initialised on the CPU: the same start on any device
    use_quadratic_attention(model)
    opt = torch.optim.AdamW(model.parameters(), lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"])
    warmup = train_cfg["warmup"]
    decay = min(train_cfg["decay_steps"], steps)  # constant after the warmup, then a cosine to zero

    def lr_factor(s: int) -> float:
        decayed = max(s - (steps - decay), 0) / decay
        return min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(decayed, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    log_every = train_cfg["log_every"]
    points: list[dict[str, Any]] = []
    window: list[StepRecord] = []
    start, cpu_start, load_start = time.time(), time.process_time(), os.getloadavg()
    for step in range(1, steps + 1):
        twice = rng.random() < train_cfg["read_twice_fraction"]
        ids, mask, targets = (
            t.to(device)
            for t in make_batch(
                rng, curriculum.task, train_cfg["batch_size"], train_cfg["queries_per_row"], config, twice
            )
        )
        logits = model(ids, mask)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        predicted = logits.detach().argmax(-1)
        window.append(
            StepRecord(
                loss.item(), first_answer_right(predicted, targets), twice, *answers_right(predicted, targets)
            )
        )
        if step % log_every == 0 or step == steps:
            once = [r.first_right for r in window if not r.twice]
            twice_right = [r.first_right for r in window if r.twice]
            accuracy = sum(r.answers_right for r in window) / max(sum(r.answers_asked for r in window), 1)
            point = {
                "step": step,
                "seconds": round(time.time() - start, 1),
                "cpu_seconds": round(time.process_time() - cpu_start, 1),
                "loss": round(sum(r.loss for r in window) / len(window), 4),
                "first_answer_once": _share(once),
                "first_answer_twice": _share(twice_right),
                "answers": round(accuracy, 3),
                "pairs": [curriculum.task.min_pairs, curriculum.task.max_pairs],
            }
            points.append(point)
            window = []
            curriculum.update(accuracy)
            if not quiet:
                print(json.dumps(point), file=sys.stderr, flush=True)
    save_checkpoint(model.eval(), out)
    if curve is not None:
        write_json(
            curve,
            {
                "model": name,
                "checkpoint": str(out),
                "command": " ".join(["python -m jrtc.example.train", *sys.argv[1:]]),
                "settings_file": str(settings_file),
                "settings": {"task": settings["task"], "model": config.to_dict(), "train": train_cfg},
                "steps": steps,
                "seconds": round(time.time() - start, 1),
                "cpu_seconds": round(time.process_time() - cpu_start, 1),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
                + (f", {torch.cuda.get_device_name(device)}" if device.startswith("cuda") else ""),
                "device": device,
                "load_average_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
                "curve": points,
                "curve_note": "first_answer_*: share of training rows whose first answer the model gets "
                "right (argmax, teacher-forced) over the last log_every steps; answers: share of all the rows' "
                "answers right; pairs: the curriculum's range of pairs per context; rows are fresh draws",
            },
        )
    print(f"wrote {out} ({time.time() - start:.0f} s)", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", choices=("based", "jrt"))
    parser.add_argument(
        "--settings", type=Path, default=SETTINGS, help="settings file (default: the shipped one)"
    )
    parser.add_argument("--steps", type=int, help="override the settings' train.steps")
    parser.add_argument("--out", type=Path, help="checkpoint to write (default: the shipped one)")
    parser.add_argument("--curve", type=Path, help="write the learning curve and run facts here (JSON)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--device", default="cpu", help="where to train, e.g. cuda (default: cpu)")
    args = parser.parse_args()
    try:
        train(args.model, args.settings, args.steps, args.out, args.curve, args.quiet, args.device)
    except JrtcError as exc:  # e.g. init_from names a checkpoint that is missing: train Based first
        sys.exit(f"jrtc.example.train: error: {exc}")


if __name__ == "__main__":
    main()
