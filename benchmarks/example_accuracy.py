"""Recall accuracy of the two built-in examples, read once and twice, by ``jrtc eval`` on their cpu engines.

    python benchmarks/example_accuracy.py [--limit N]

Exports ``recall.pt`` (JRT-RNN) and ``recall-based.pt`` (Based) with ``jrtc export --target cpu``, runs
``jrtc eval ENGINE --task recall --json --show-answers`` on each (the settings' 500 fresh prompts), and writes
``benchmarks/results/example_accuracy.json``: the two readings per model, accuracy by the number of pairs
in the context, every answer, the training facts from ``example_training_{jrt,based}.json`` and the machine.
"""

from __future__ import annotations

import argparse
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


def measure(name: str, checkpoint: Path, limit: int | None, workdir: Path) -> dict[str, Any]:
    engine = workdir / name
    subprocess.run(
        [*JRTC, "export", checkpoint, "--target", "cpu", "--tokenizer", "bytes", "-o", engine, "--quiet"],
        check=True,
    )
    limit_args = ["--limit", str(limit)] if limit else []
    out = subprocess.run(
        [*JRTC, "eval", engine, "--task", "recall", "--json", "--show-answers", "--quiet", *limit_args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    report = json.loads(out)
    settings = load_settings()["eval"]
    rows = eval_rows(load_task(), report["examples"], settings["seed"])
    training_file = RESULTS / f"example_training_{name}.json"
    training = json.loads(training_file.read_text()) if training_file.exists() else {}
    return {
        "checkpoint": str(checkpoint.relative_to(ROOT)),
        "checkpoint_bytes": checkpoint.stat().st_size,
        "command": f"jrtc eval ENGINE --task recall --json{' ' + ' '.join(limit_args) if limit else ''}",
        "examples": report["examples"],
        "readings": {
            {1: "once", 2: "twice"}[r["repeat"]]: {k: v for k, v in r.items() if k != "repeat"}
            for r in report["readings"]
        },
        "accuracy_by_pairs": {read: by_pairs(rows, report["answers"], read) for read in ("once", "twice")},
        # every greedy answer, in prompt order: tests/test_eval.py checks the shipped engines still give them
        "answers": {read: [a[read]["answer"] for a in report["answers"]] for read in ("once", "twice")},
        "training": {k: training.get(k) for k in ("command", "steps", "seconds", "cpu_seconds", "machine")}
        | {"load_average_start_end": training.get("load_average_start_end")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, help="evaluate the first N prompts only (default: the settings')")
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
        print(f"{name}: read once {once['accuracy']:.1%}, read twice {twice['accuracy']:.1%}")


if __name__ == "__main__":
    main()
