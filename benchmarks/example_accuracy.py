"""Recall accuracy of the two built-in examples, read once and twice, by ``jrtc eval`` on their cpu engines.

    python benchmarks/example_accuracy.py [--limit N]

Exports ``recall.pt`` (JRT-RNN) and ``recall-based.pt`` (Based) with ``jrtc export --target cpu``, runs
``jrtc eval ENGINE --task recall --json --show-answers`` on each (the settings' 500 fresh prompts), and writes
``benchmarks/results/example_accuracy.json``: the two readings per model, accuracy by the number of pairs
in the context, every answer, the training facts from ``example_training_{jrt,based}.json`` and the machine;
then the same on as many prompts with longer contexts than training held (13 to 26 pairs, through a JSONL
file), where a model's recurrent state must hold more.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from jrtc.example import BASED_CHECKPOINT, CHECKPOINT
from jrtc.example.recall_task import eval_rows, load_settings, load_task
from jrtc.example.train import write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
JRTC = [sys.executable, "-m", "jrtc.cli"]


def by_pairs(rows: list[dict[str, str]], answers: list[dict[str, Any]], read: str) -> dict[str, float]:
    """Accuracy of one reading per number of pairs in the context."""
    right: dict[int, list[bool]] = defaultdict(list)
    for row, answer in zip(rows, answers, strict=True):
        right[len(row["text"].split(", "))].append(answer[read]["right"])
    return {str(n): round(sum(r) / len(r), 3) for n, r in sorted(right.items())}


def evaluate(engine: Path, task_args: list[str]) -> dict[str, Any]:
    """``jrtc eval ENGINE TASK_ARGS --json --show-answers``'s report."""
    out = subprocess.run(
        [*JRTC, "eval", engine, *task_args, "--json", "--show-answers", "--quiet"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def readings(report: dict[str, Any], rows: list[dict[str, str]]) -> dict[str, Any]:
    """The two readings of a report: accuracy and speed, and accuracy by number of pairs."""
    return {
        "readings": {
            {1: "once", 2: "twice"}[r["repeat"]]: {k: v for k, v in r.items() if k != "repeat"}
            for r in report["readings"]
        },
        "accuracy_by_pairs": {read: by_pairs(rows, report["answers"], read) for read in ("once", "twice")},
    }


def measure(name: str, checkpoint: Path, limit: int | None, workdir: Path) -> dict[str, Any]:
    engine = workdir / name
    subprocess.run(
        [*JRTC, "export", checkpoint, "--target", "cpu", "--tokenizer", "bytes", "-o", engine, "--quiet"],
        check=True,
    )
    limit_args = ["--limit", str(limit)] if limit else []
    report = evaluate(engine, ["--task", "recall", *limit_args])
    settings = load_settings()["eval"]
    task = load_task()
    rows = eval_rows(task, report["examples"], settings["seed"])
    # Beyond training: contexts of more pairs than any training row held, up to every key of the alphabet.
    longer = dataclasses.replace(task, min_pairs=task.max_pairs + 1, max_pairs=len(task.keys))
    longer_rows = eval_rows(longer, report["examples"], settings["seed"])
    longer_file = workdir / f"{name}-longer.jsonl"
    longer_file.write_text("".join(json.dumps(r) + "\n" for r in longer_rows))
    training_file = RESULTS / f"example_training_{name}.json"
    training = json.loads(training_file.read_text()) if training_file.exists() else {}
    return {
        "checkpoint": str(checkpoint.relative_to(ROOT)),
        "checkpoint_bytes": checkpoint.stat().st_size,
        "command": f"jrtc eval ENGINE --task recall --json{' ' + ' '.join(limit_args) if limit else ''}",
        "examples": report["examples"],
        **readings(report, rows),
        # every greedy answer, in prompt order: tests/test_eval.py checks the shipped engines still give them
        "answers": {read: [a[read]["answer"] for a in report["answers"]] for read in ("once", "twice")},
        "longer_contexts": {
            "pairs": [longer.min_pairs, longer.max_pairs],
            "command": "jrtc eval ENGINE --task LONGER.jsonl --json (rows drawn as the task's, eval seed)",
            **readings(evaluate(engine, ["--task", str(longer_file)]), longer_rows),
        },
        "training": {k: training.get(k) for k in ("command", "steps", "seconds", "cpu_seconds", "machine")}
        | {"load_average_start_end": training.get("load_average_start_end")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--limit", type=int, help="evaluate the first N prompts only (default: the settings')"
    )
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as workdir:
        models = {
            name: measure(name, checkpoint, args.limit, Path(workdir))
            for name, checkpoint in (("jrt", CHECKPOINT), ("based", BASED_CHECKPOINT))
        }
    result = {
        "task": "recall (jrtc/example/recall_task.py), eval seed and size from jrtc/example/settings.json",
        "metric": "contains, greedy, answer budget 1 token (the value's letter)",
        "models": models,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "load_average_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
    }
    write_json(RESULTS / "example_accuracy.json", result)
    for name, model in models.items():
        once, twice = model["readings"]["once"], model["readings"]["twice"]
        longer = model["longer_contexts"]["readings"]
        print(
            f"{name}: read once {once['accuracy']:.1%}, read twice {twice['accuracy']:.1%}; "
            f"longer contexts {longer['once']['accuracy']:.1%} / {longer['twice']['accuracy']:.1%}"
        )


if __name__ == "__main__":
    main()
