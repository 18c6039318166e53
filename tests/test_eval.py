"""``jrtc eval``: the paper's templates and ``contains`` metric, the command end to end on the built-in
examples' engines (against the PyTorch models decoding greedily), and the demo's answers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from jrtc.checkpoint import load_checkpoint
from jrtc.cli import main
from jrtc.errors import JrtcError
from jrtc.example import BASED_CHECKPOINT, CHECKPOINT, EXAMPLE_DIR
from jrtc.example.recall_task import context_text, eval_rows, load_settings, load_task
from jrtc.model import JRTModel
from jrtc.runtime.eval import answer_text, contains, item_from_row, read_jsonl

# ---- templates: lm-eval-harness/lm_eval/tasks/based_{fda,swde,nq,triviaqa,drop}/task.py in
# https://github.com/HazyResearch/prefix-linear-attention, doc_to_text of each task and of its Twice class.

FDA_ROW = {
    "text": "510(k) SUMMARY\nDevice name: Glucose meter. Date prepared: June 5, 2009.\ndate prepared:",
    "key": "date prepared",
    "value": "June 5, 2009",
}
FDA_DOC = "510(k) SUMMARY\nDevice name: Glucose meter. Date prepared: June 5, 2009."

NQ_ROW = {
    "context": "The Eiffel Tower is a wrought-iron tower in Paris, France. It is named after Gustave Eiffel.",
    "question": "The Eiffel Tower is named after",
    "orig_question": "who is the eiffel tower named after?",
    "answers": ["Gustave Eiffel", "Eiffel"],
}
NQ_CTX = "The Eiffel Tower is a wrought-iron tower in Paris, France. It is named after Gustave Eiffel."


def test_information_extraction_templates() -> None:
    # FDA/SWDE: the trailing "key:" is dropped, the key's first letter upper-cased, one "." ends the doc.
    item = item_from_row(FDA_ROW)
    assert item.prompt(1).text == f"{FDA_DOC} Date prepared:"
    assert item.prompt(2).text == f"Information about Date prepared. {FDA_DOC}\n{FDA_DOC} Date prepared:"
    assert item.answers == ("June 5, 2009",)


def test_question_answer_templates() -> None:
    # NQ/TriviaQA/DROP: "{ctx}. {question}" and "{orig_question} {ctx}.\n{ctx}. {question}".
    item = item_from_row(NQ_ROW)
    assert item.prompt(1).text == f"{NQ_CTX} The Eiffel Tower is named after"
    assert item.prompt(2).text == (
        f"who is the eiffel tower named after? {NQ_CTX}\n{NQ_CTX} The Eiffel Tower is named after"
    )
    assert item.answers == ("Gustave Eiffel", "Eiffel")


def test_question_answer_row_cleanup() -> None:
    row = {
        "context": "[DOC] [TLE] Paris [PAR] Paris is the capital of France.. The capital of France is",
        "question": "The capital of France is",
        "orig_question": "what is the capital of france:",
        "answers": "Paris",
    }
    item = item_from_row(row)
    # TriviaQA's markers go, the question the context ends with goes, trailing dots become one.
    ctx = "Paris  Paris is the capital of France."
    assert item.prompt(1).text == f"{ctx} The capital of France is"
    assert item.prompt(2).text == f"what is the capital of france {ctx}\n{ctx} The capital of France is"
    assert item.answers == ("Paris",)


def test_the_recall_task_reads_as_information_extraction() -> None:
    pairs = [("D", "47"), ("Q", "05"), ("K", "83")]
    item = item_from_row({"text": context_text(pairs), "key": "Q", "value": "05"})
    assert item.prompt(1).text == "D:47, Q:05, K:83. Q:"
    assert item.prompt(2).text == "Information about Q. D:47, Q:05, K:83.\nD:47, Q:05, K:83. Q:"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([1, 2], "not a JSON object"),
        ({"text": "a", "value": "b"}, "neither the fields"),
        ({"text": "a", "key": " ", "value": "b"}, "empty key"),
        ({"context": "c", "question": "q", "orig_question": "o", "answers": []}, "non-empty list"),
        ({"context": "c", "question": "q", "answers": ["a"]}, "orig_question"),
    ],
)
def test_bad_rows(row: object, message: str) -> None:
    with pytest.raises(JrtcError, match=message):
        item_from_row(row, "rows.jsonl:3")


# ---- the metric: contains_score of the harness, on the answer cut at its first newline


@pytest.mark.parametrize(
    ("generated", "gold", "right"),
    [
        ("47", ["47"], True),
        (" Gustave Eiffel, an engineer", ["gustave eiffel"], True),  # case-insensitive, anywhere
        ("Eiffel", ["Gustave Eiffel", "Eiffel"], True),  # any gold answer
        ("Gustave", ["Gustave Eiffel"], False),
        ("48", ["47"], False),
        ("12\n47", ["47"], False),  # only the first line counts
        ("", ["47"], False),
        ("costs 5x00", ["5.00"], False),  # the gold is matched literally, not as a pattern
        ("costs $5.00 (c)", ["$5.00 (c)"], True),
    ],
)
def test_contains_metric(generated: str, gold: list[str], right: bool) -> None:
    assert contains(answer_text(generated), gold) is right


# ---- jrtc eval end to end


def _cli(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval-engines")
    out = {}
    for name, checkpoint in (("jrt", CHECKPOINT), ("based", BASED_CHECKPOINT)):
        result = _cli(
            "export", checkpoint, "--target", "cpu", "--tokenizer", "bytes", "-o", root / name, "--quiet"
        )
        assert result.exit_code == 0, result.output
        out[name] = root / name
    return out


@torch.no_grad()
def _greedy_answer(model: JRTModel, prompt: str, budget: int) -> str:
    """The PyTorch model's greedy answer, fed by the reference protocol (left-padded, pads masked)."""
    ids = list(prompt.encode())
    pads = max(model.config.enc_length - len(ids), 0)
    ids = [model.config.pad_token_id] * pads + ids
    state = model.init_state(1)
    logits = model.prefill(torch.tensor([ids]), state, torch.arange(len(ids))[None] >= pads)[:, -1]
    out = []
    for _ in range(budget):
        token = int(logits[0, : model.config.vocab_size].argmax())
        if token == ord("\n"):
            break
        out.append(token)
        logits = model.step(torch.tensor([token]), state)
    return bytes(out).decode()


def test_eval_on_a_jsonl_file_matches_the_pytorch_model(engines: dict[str, Path], tmp_path: Path) -> None:
    rows = eval_rows(load_task(), 6, seed=99)
    rows.append({"text": context_text([("A", "12"), ("B", "34")]), "key": "B", "value": "nowhere"})
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    items = read_jsonl(path)
    for name, checkpoint in (("jrt", CHECKPOINT), ("based", BASED_CHECKPOINT)):
        result = _cli(
            "eval", engines[name], "--task", path, "--json", "--show-answers", "--max-new-tokens", 4
        )
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert [r["repeat"] for r in report["readings"]] == [1, 2]
        assert "jrtc eval" in result.stderr  # the progress bar
        model = load_checkpoint(checkpoint)
        for reading in report["readings"]:
            read = {1: "once", 2: "twice"}[reading["repeat"]]
            expected = [_greedy_answer(model, item.prompt(reading["repeat"]).text, 4) for item in items]
            assert [a[read]["answer"] for a in report["answers"]] == expected
            right = [contains(e, item.answers) for e, item in zip(expected, items, strict=True)]
            assert [a[read]["right"] for a in report["answers"]] == right
            assert reading["right"] == sum(right) and reading["examples"] == len(rows)
            assert reading["accuracy"] == pytest.approx(sum(right) / len(rows))
            assert reading["tokens_per_s"] > 0
        assert report["answers"][-1]["once"]["right"] is False  # "nowhere" is never the answer


def test_eval_table_and_quiet(engines: dict[str, Path]) -> None:
    result = _cli("eval", engines["jrt"], "--task", "recall", "--limit", 5, "--repeat", "1", "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    lines = result.stdout.strip().splitlines()
    assert "recall, 5 prompts" in lines[0] and "contains" in lines[0]
    assert lines[1].split()[:2] == ["read", "accuracy"]
    assert re.match(r"once\s+\d+\.\d%\s+\d/5\s", lines[2]), lines[2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--repeat", "1,x"], "--repeat takes"),
        (["--repeat", "0"], "--repeat takes"),
        (["--repeat", "2,2"], "--repeat takes"),
        (["--task", "missing.jsonl"], "task file not found"),
        (["--task", "{bad}"], "is not valid JSON"),
        (["--task", "{empty}"], "has no rows"),
    ],
)
def test_eval_errors_are_one_line(
    engines: dict[str, Path], tmp_path: Path, args: list[str], message: str
) -> None:
    bad, empty = tmp_path / "bad.jsonl", tmp_path / "empty.jsonl"
    bad.write_text('{"text": "a", "key": "b", "value": "c"}\n{oops\n', encoding="utf-8")
    empty.write_text("\n", encoding="utf-8")
    args = [a.format(bad=bad, empty=empty) for a in args]
    if "--task" not in args:
        args += ["--task", "recall"]
    result = _cli("eval", engines["jrt"], *args)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jrtc: error: ") and message in lines[0], result.stderr


# ---- the demo (make demo): every key of the demo context, read once and twice, by both examples


def test_demo_rows_ask_every_key_of_the_demo_context() -> None:
    context = (EXAMPLE_DIR / "context.txt").read_text(encoding="utf-8").strip()
    pairs = [tuple(pair.split(":")) for pair in context.split(", ")]
    rows = [
        json.loads(line) for line in (EXAMPLE_DIR / "demo.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert rows == [{"text": context, "key": k, "value": v} for k, v in pairs]


@pytest.mark.parametrize("name", ["jrt", "based"])
def test_demo_answers_are_checked(engines: dict[str, Path], name: str) -> None:
    demo = EXAMPLE_DIR / "demo.jsonl"
    items = read_jsonl(demo)
    model = load_checkpoint({"jrt": CHECKPOINT, "based": BASED_CHECKPOINT}[name])
    budget = load_task().answer_budget
    expected = {
        read: [_greedy_answer(model, item.prompt(repeat).text, budget) for item in items]
        for repeat, read in ((1, "once"), (2, "twice"))
    }
    text = _cli(
        "eval", engines[name], "--task", demo, "--show-answers", "--quiet", "--max-new-tokens", budget
    )
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["question", "gold", "read", "once", "read", "twice"]
    for item, line, once, twice in zip(items, lines[1:], expected["once"], expected["twice"], strict=False):
        marks = ["right" if contains(a, item.answers) else "wrong" for a in (once, twice)]
        cells = f"{item.question} {item.answers[0]} {once!r} {marks[0]} {twice!r} {marks[1]}"
        assert line.split() == cells.split()
    table = {line.split()[0]: line.split() for line in lines[len(items) + 3 :]}
    for read, answers in expected.items():
        right = sum(contains(a, item.answers) for a, item in zip(answers, items, strict=True))
        assert table[read][2] == f"{right}/{len(items)}"


# ---- the shipped examples are the models of the README's table (benchmarks/example_accuracy.py)


@pytest.mark.parametrize("name", ["jrt", "based"])
def test_shipped_examples_answer_what_the_table_recorded(engines: dict[str, Path], name: str) -> None:
    """The first 100 of the table's 500 prompts, on the engine: at least 95 of each reading's answers are the
    recorded ones (not all need be: a near-tie may fall the other way on another CPU), so weights retrained
    or replaced without measuring them again fail here; and the recorded answers score the recorded
    accuracy."""
    recorded = json.loads(
        (Path(__file__).resolve().parents[1] / "benchmarks/results/example_accuracy.json").read_text()
    )["models"][name]
    settings = load_settings()["eval"]
    items = [item_from_row(r) for r in eval_rows(load_task(), settings["examples"], settings["seed"])]
    result = _cli(
        "eval", engines[name], "--task", "recall", "--limit", 100, "--json", "--show-answers", "--quiet"
    )
    assert result.exit_code == 0, result.output
    answers = json.loads(result.stdout)["answers"]
    for read in ("once", "twice"):
        kept = recorded["answers"][read]
        right = sum(contains(a, item.answers) for a, item in zip(kept, items, strict=True))
        assert recorded["readings"][read]["right"] == right and recorded["examples"] == len(items)
        same = sum(a[read]["answer"] == b for a, b in zip(answers, kept[:100], strict=True))
        assert same >= 95, (read, same)
