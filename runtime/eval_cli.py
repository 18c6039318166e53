"""``jrtc eval``: recall accuracy of an engine, context read once and read twice (see ``runtime/eval.py``)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click

from jrtc.errors import JrtcError
from jrtc.runtime.engine import Engine
from jrtc.runtime.eval import ANSWER_BUDGET, Item, Reading, evaluate, item_from_row, read_jsonl

BUILT_IN_TASK = "recall"


def parse_repeats(text: str) -> list[int]:
    """``"1,2"`` -> ``[1, 2]``: how many copies of the context each reading puts in the prompt."""
    try:
        repeats = [int(part) for part in text.split(",")]
    except ValueError:
        raise JrtcError(
            f"--repeat takes copies of the context separated by commas (e.g. 1,2), got {text!r}"
        ) from None
    if any(r < 1 for r in repeats) or len(set(repeats)) != len(repeats):
        raise JrtcError(f"--repeat takes distinct counts >= 1 (e.g. 1,2), got {text!r}")
    return repeats


def load_items(task: str, limit: int | None) -> tuple[list[Item], int]:
    """The task's items (the first ``limit``) and its default answer budget."""
    if task == BUILT_IN_TASK:
        from jrtc.example.recall_task import eval_rows, load_settings, load_task

        recall, settings = load_task(), load_settings()["eval"]
        rows = eval_rows(recall, limit or settings["examples"], settings["seed"])
        return [item_from_row(r) for r in rows], recall.answer_budget
    items = read_jsonl(Path(task))
    return items[:limit], ANSWER_BUDGET


READ = {1: "once", 2: "twice"}


def _reading_name(repeat: int) -> str:
    return READ.get(repeat, f"{repeat}x")


def format_table(readings: list[Reading]) -> str:
    lines = [f"{'read':<7}{'accuracy':>10}{'right':>12}{'prompt tokens':>15}{'tokens/s':>10}{'seconds':>9}"]
    for r in readings:
        right = f"{sum(r.right)}/{len(r.right)}"
        mean_prompt = r.prompt_tokens / len(r.right)
        lines.append(
            f"{_reading_name(r.repeat):<7}{r.accuracy:>10.1%}{right:>12}{mean_prompt:>11.1f} avg"
            f"{r.tokens_per_s:>10.0f}{r.seconds:>9.1f}"
        )
    return "\n".join(lines)


def format_answers(items: list[Item], readings: list[Reading]) -> str:
    """One line per item: the question, the gold answer, and each reading's answer marked right or wrong."""
    width = max(len("question"), *(len(item.question) for item in items)) + 2
    header = f"{'question':<{width}}{'gold':<10}" + "".join(
        f"{'read ' + _reading_name(r.repeat):<20}" for r in readings
    )
    lines = [header]
    for i, item in enumerate(items):
        cells = "".join(
            f"{(repr(r.answers[i]) + (' right' if r.right[i] else ' wrong')):<20}" for r in readings
        )
        lines.append(f"{item.question:<{width}}{item.answers[0]:<10}{cells}")
    return "\n".join(lines)


@click.command("eval")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--task",
    required=True,
    help="'recall' (fresh prompts of the built-in examples' task) or a JSONL file of "
    "text/key/value or context/question/orig_question/answers rows.",
)
@click.option(
    "--repeat",
    "repeat_text",
    default="1,2",
    show_default=True,
    help="Copies of the context to try, comma-separated: 1 reads it once, 2 twice (JRT-Prompt).",
)
@click.option(
    "--limit", type=click.IntRange(min=1), help="Evaluate the first N rows (recall: draw N prompts)."
)
@click.option(
    "--max-new-tokens",
    type=click.IntRange(min=1),
    help=f"Answer budget [default: {ANSWER_BUDGET} as in the paper's harness; recall: the value and a newline].",
)
@click.option(
    "--show-answers", is_flag=True, help="Print every question with its answers, marked right or wrong."
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
@click.option("--quiet", is_flag=True, help="No progress bar on stderr.")
def eval_command(
    path: Path,
    task: str,
    repeat_text: str,
    limit: int | None,
    max_new_tokens: int | None,
    show_answers: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Recall accuracy of the engine at PATH by the paper's protocol: greedy, answer cut at the first
    newline, right when it contains the gold answer (case-insensitive); context read once and twice."""
    repeats = parse_repeats(repeat_text)
    items, budget = load_items(task, limit)
    budget = max_new_tokens or budget
    engine = Engine.load(path)
    readings = []
    bar = (
        None
        if quiet
        else click.progressbar(length=len(items) * len(repeats), label="jrtc eval", file=sys.stderr)
    )
    with bar or contextlib.nullcontext():
        for repeat in repeats:
            readings.append(
                evaluate(
                    engine, items, repeat, budget, on_answer=None if bar is None else lambda: bar.update(1)
                )
            )
    if as_json:
        result = {
            "engine": str(path),
            "task": task,
            "examples": len(items),
            "max_new_tokens": budget,
            "metric": "contains",
            "readings": [r.summary() for r in readings],
        }
        if show_answers:
            result["answers"] = [
                {"question": item.question, "gold": list(item.answers)}
                | {_reading_name(r.repeat): {"answer": r.answers[i], "right": r.right[i]} for r in readings}
                for i, item in enumerate(items)
            ]
        click.echo(json.dumps(result, indent=1))
        return
    if show_answers:
        click.echo(format_answers(items, readings) + "\n")
    click.echo(
        f"{path}: {task}, {len(items)} prompts, greedy, up to {budget} new tokens, contains metric\n"
        + format_table(readings)
    )
