"""The built-in examples: their task, their training rows, the script that trains them, and that the shipped
checkpoints are the models the settings describe."""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jrtc.checkpoint import load_checkpoint, save_checkpoint
from jrtc.example import BASED_CHECKPOINT, CHECKPOINT, SETTINGS
from jrtc.example.recall_task import eval_rows, load_settings, load_task
from jrtc.example.train import (
    IGNORE,
    Curriculum,
    answers_right,
    make_batch,
    model_settings,
    training_row,
    use_quadratic_attention,
    warm_start,
)
from jrtc.model import JRTModel
from jrtc.runtime.eval import item_from_row


def test_task_draws_distinct_keys_and_values() -> None:
    task = load_task()
    rng = random.Random(0)
    for _ in range(200):
        pairs = task.draw_pairs(rng)
        keys, values = zip(*pairs, strict=True)
        assert task.min_pairs <= len(pairs) <= task.max_pairs
        assert len(set(keys)) == len(keys) and len(set(values)) == len(values)
        assert set(keys) <= set(task.keys) and set(values) <= set(task.values)


def test_eval_rows_are_fresh_and_reproducible() -> None:
    task = load_task()
    rows = eval_rows(task, 50, seed=1)
    assert rows == eval_rows(task, 50, seed=1)
    assert len({r["text"] for r in rows}) == 50
    for row in rows:
        assert f"{row['key']}:{row['value']}" in row["text"]


@pytest.mark.parametrize("name", ["jrt", "based"])
@pytest.mark.parametrize("twice", [False, True])
def test_training_rows_supervise_answers_only_after_the_encoder(name: str, twice: bool) -> None:
    settings = load_settings()
    config, train, _ = model_settings(settings, name)
    rng = random.Random(3)
    ids, targets, pads = training_row(
        rng, load_task(), twice, train["queries_per_row"], config.enc_length, 32
    )
    assert len(ids) == len(targets)
    assert all(t == IGNORE or t == ids[i + 1] for i, t in enumerate(targets[:-1]))  # next-token targets
    first = next(i for i, t in enumerate(targets) if t != IGNORE)
    text = bytes(ids[pads : first + 1]).decode()
    # The prompt is the evaluation prompt of the first query, left-padded with spaces up to enc_length ...
    context, question = text.rsplit(". ", 1)[0].split("\n")[-1], text.rsplit(" ", 1)[-1]
    item = item_from_row({"text": context, "key": question[0], "value": "?"})
    assert text == item.prompt(2 if twice else 1).text
    assert pads == max(config.enc_length - len(text), 0) and set(ids[:pads]) <= {32}
    # ... and every supervised token lies past the encoder region, which the non-causal encoder sees whole.
    assert first + 1 >= config.enc_length
    answers = bytes(ids[first + 1 :]).decode().splitlines()
    assert len(answers) == min(train["queries_per_row"], len(context.split(", ")))
    assert all(len(a) == 1 or (len(a) == 3 and a[1] == ":") for a in answers)


@pytest.mark.parametrize("name", ["jrt", "based"])
def test_training_attention_gives_the_model_s_outputs(name: str) -> None:
    """Training reads PLA/LA through the kernel on the 16-dim projections; the logits (and so the gradients)
    must be those of the model's own forward, padded rows, encoder and all."""
    config, train, _ = model_settings(load_settings(), name)
    torch.manual_seed(0)
    model = JRTModel(config)
    for p in model.parameters():  # weights large enough that a wrong kernel shows
        torch.nn.init.normal_(p, std=0.3)
    rng = random.Random(5)
    for twice in (False, True):
        curriculum = Curriculum(load_task(), train["min_pairs"], train["start_max_pairs"], train["grow_at"])
        ids, mask, _ = make_batch(rng, curriculum.task, 4, train["queries_per_row"], config, twice)
        expected = model(ids, mask)
        trained = JRTModel(config)
        trained.load_state_dict(model.state_dict())
        use_quadratic_attention(trained)
        torch.testing.assert_close(trained(ids, mask), expected, rtol=1e-4, atol=1e-4)


def test_curriculum_grows_the_contexts_only_after_the_model_answers() -> None:
    task = load_task()
    curriculum = Curriculum(task, min_pairs=2, start_max_pairs=4, grow_at=0.9)
    assert (curriculum.task.min_pairs, curriculum.task.max_pairs) == (2, 4)
    curriculum.update(0.89)  # the bag of values, not yet recall: stay
    assert curriculum.task.max_pairs == 4
    for _ in range(20):
        curriculum.update(0.9)
    assert curriculum.task == dataclasses.replace(task, min_pairs=2)  # up to the task's most, no further


def test_answers_right_counts_the_value_letters_only() -> None:
    targets = torch.tensor([[IGNORE, ord("a"), ord("\n"), IGNORE, ord("b"), ord("\n")]])
    logits = torch.zeros(1, 6, 256)
    logits[0, 1, ord("a")] = logits[0, 4, ord("c")] = 1  # first right, second wrong; newlines not counted
    assert answers_right(logits.argmax(-1), targets) == (1, 2)


def test_warm_start_takes_the_based_weights_and_copies_the_decoder_into_the_encoder(tmp_path: Path) -> None:
    settings = load_settings()
    jrt_config, _, _ = model_settings(settings, "jrt")
    based_config, _, _ = model_settings(settings, "based")
    torch.manual_seed(0)
    based = JRTModel(based_config)
    save_checkpoint(based, tmp_path / "based.pt")
    jrt = JRTModel(jrt_config)
    warm_start(jrt, tmp_path / "based.pt")
    source, started = based.state_dict(), jrt.state_dict()
    for name, tensor in started.items():
        torch.testing.assert_close(tensor, source[name.replace("_enc.", ".")], rtol=0, atol=0)
    assert any("_enc." in name for name in started)
    other = dataclasses.replace(based_config, d_model=32, n_inner=128)
    save_checkpoint(JRTModel(other), tmp_path / "small.pt")
    with pytest.raises(SystemExit, match="cannot start this model: no tensor .* of shape"):
        warm_start(jrt, tmp_path / "small.pt")


def test_training_from_a_missing_checkpoint_fails_in_one_line(tmp_path: Path) -> None:
    settings = json.loads(SETTINGS.read_text())
    settings["models"]["jrt"]["train"] = {"init_from": "no-such.pt"}
    changed = tmp_path / "settings.json"
    changed.write_text(json.dumps(settings))
    run = subprocess.run(
        [sys.executable, "-m", "jrtc.example.train", "jrt", "--settings", changed, "--steps", "1"]
        + ["--out", tmp_path / "model.pt", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1 and not (tmp_path / "model.pt").exists()
    assert run.stderr.count("\n") == 1 and "no-such.pt" in run.stderr, run.stderr


@pytest.mark.parametrize(("name", "checkpoint"), [("jrt", CHECKPOINT), ("based", BASED_CHECKPOINT)])
def test_shipped_checkpoints_are_the_models_of_the_settings(name: str, checkpoint: Path) -> None:
    config, _, path = model_settings(load_settings(), name)
    assert path == checkpoint
    assert load_checkpoint(checkpoint).config == config
    assert ("pla" in config.layer_types) == (name == "jrt") and ("la" in config.layer_types) == (
        name == "based"
    )


def test_training_script_writes_a_checkpoint_and_its_curve(tmp_path: Path) -> None:
    out, curve = tmp_path / "model.pt", tmp_path / "curve.json"
    settings = json.loads(SETTINGS.read_text())
    settings["train"].update(batch_size=2, log_every=1)
    small = tmp_path / "settings.json"
    small.write_text(json.dumps(settings))
    subprocess.run(
        [sys.executable, "-m", "jrtc.example.train", "jrt", "--settings", small, "--steps", "2"]
        + ["--out", out, "--curve", curve, "--quiet"],
        check=True,
    )
    assert load_checkpoint(out).config == model_settings(settings, "jrt")[0]
    report = json.loads(curve.read_text())
    assert [p["step"] for p in report["curve"]] == [1, 2] and report["steps"] == 2
