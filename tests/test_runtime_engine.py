"""The runtime on exported engines: ONNX Runtime against the PyTorch model, continuous batching, constant
memory, a torch-free import, and the CLI's handling of bad input.

Engines are exported once per session with ``jrtc export`` (the built-in example and random checkpoints in
the original HF layout); each test that damages one works on a copy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from click.testing import CliRunner, Result
from jrt_fixtures import export_with_cli, hf_config, random_state_dict, write_hf_checkpoint
from pool_wrappers import PoolWrapper, Recorder, recording
from tokenizers import Tokenizer

from jrtc.checkpoint import load_checkpoint
from jrtc.cli import main
from jrtc.errors import JrtcError
from jrtc.example import CHECKPOINT
from jrtc.model import JRTModel
from jrtc.runtime import Engine, SamplingParams, build_prompt
from jrtc.runtime.sampling import Draw, sample
from jrtc.tokenizer import byte_level_tokenizer_json

TEXT = (
    "ab:12, cd:34, ef:56, gh:78, ij:90, kl:13, mn:57, op:91, qr:35, st:79. "
    "The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. "
)


@dataclass(frozen=True)
class Exported:
    name: str
    checkpoint: Path
    engine: Path
    model: JRTModel


# name -> (checkpoint maker, export options); random checkpoints cover a padded vocabulary (300 -> 304),
# an EOS id, and a Based-style model (linear attention, no encoder).
MODELS = {
    "example": ({}, ["--max-prompt-len", "160", "--max-batch", "4"]),
    "random-jrt": (
        {
            "layer_types": ["conv", "pla", "swa", "conv", "pla", "swa"],
            "d_model": 64,
            "heads": 4,
            "enc_length": 48,
            "window_size": 16,
            "vocab_size": 300,
        },
        ["--max-prompt-len", "64", "--max-batch", "3"],
    ),
    "random-based": (
        {
            "layer_types": ["conv", "la", "swa", "conv"],
            "d_model": 32,
            "heads": 2,
            "enc_length": 0,
            "window_size": 8,
        },
        ["--max-prompt-len", "32", "--max-batch", "2"],
    ),
}


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Exported]:
    root = tmp_path_factory.mktemp("engines")
    out = {}
    for seed, (name, (hf_options, options)) in enumerate(MODELS.items()):
        if name == "example":
            checkpoint = CHECKPOINT
        else:
            hf = hf_config(**hf_options)
            hf["eos_token_id"] = 10 if name == "random-jrt" else None
            checkpoint = write_hf_checkpoint(root / f"{name}-ckpt", hf, random_state_dict(hf, seed))
        export_with_cli(checkpoint, root / name, options)
        out[name] = Exported(name, checkpoint, root / name, load_checkpoint(checkpoint))
    return out


def _prompt(length: int) -> list[int]:
    return list((TEXT * (length // len(TEXT) + 1)).encode()[:length])


@torch.no_grad()
def _torch_logits(model: JRTModel, ids: list[int], num_pad: int) -> np.ndarray:
    """Logits ``[len(ids), V]`` of the PyTorch model over a whole sequence in one call, its first ``num_pad``
    keys masked (the reference's left-pad protocol). Fed the prompt and the runtime's tokens, these are the
    model's logits at every step, so the runtime's tokens are the model's tokens if each is the one the
    model picks from them (greedy: the argmax)."""
    key_mask = torch.arange(len(ids))[None] >= num_pad
    logits, _ = model.forward_step(torch.tensor([ids]), model.init_state(1), key_mask)
    return logits[0].numpy()


def _left_padded(model: JRTModel, prompt: list[int]) -> tuple[list[int], int]:
    pad = max(model.config.enc_length - len(prompt), 0)
    return [model.config.pad_token_id] * pad + prompt, pad


def _generate(
    engine: Engine, prompt: object, params: SamplingParams
) -> tuple[list[int], np.ndarray, Recorder]:
    """The runtime's tokens for one prompt, the logits each was drawn from, and the backend calls."""
    session = engine.session(max_batch=1)
    recorder = recording(session)
    tokens = [t.id for t in session.generate(prompt, params)]
    return tokens, np.stack([lg[0] for lg in recorder.logits[-len(tokens) :]]), recorder


def _expect_pytorch(
    model: JRTModel,
    ids: list[int],
    num_pad: int,
    tokens: list[int],
    logits: np.ndarray,
    params: SamplingParams,
) -> None:
    expected = _torch_logits(model, ids + tokens[:-1], num_pad)[len(ids) - 1 :]
    np.testing.assert_allclose(logits, expected, rtol=1e-3, atol=1e-3)
    vocab, seed = model.config.vocab_size, params.seed or 0  # greedy draws take no seed
    assert tokens == [sample(row[:vocab], Draw(params, seed, i)) for i, row in enumerate(expected)]


def _lengths(engine: Engine) -> dict[str, int]:
    m = engine.manifest
    return {
        "short": max(m.enc_length // 2, 5),  # left-padded (when there is an encoder)
        "long": (m.enc_length + m.max_prompt_len) // 2 + 1,  # past the encoder, one call
        "chunked": 2 * m.max_prompt_len + 37,  # three calls
    }


NEW_TOKENS = 257  # the first from the prefill, then 256 decode steps
GREEDY = SamplingParams(max_new_tokens=NEW_TOKENS, stop_on_eos=False)
# Random models tend to repeat one token when greedy: a seeded draw feeds the decode varied tokens too.
SAMPLED = SamplingParams(temperature=1.0, top_p=0.95, seed=0, max_new_tokens=NEW_TOKENS, stop_on_eos=False)
CASES = {"short": GREEDY, "long": GREEDY, "chunked": GREEDY, "sampled": SAMPLED}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("case", list(CASES))
def test_engine_matches_pytorch(exported: dict[str, Exported], name: str, case: str) -> None:
    model = exported[name].model
    engine = Engine.load(exported[name].engine)
    prompt = _prompt(_lengths(engine)["long" if case == "sampled" else case])
    tokens, logits, recorder = _generate(engine, prompt, CASES[case])
    assert len(tokens) == NEW_TOKENS
    ids, num_pad = _left_padded(model, prompt)
    prefill_calls = [length for _, length in recorder.shapes[: len(recorder.shapes) - NEW_TOKENS + 1]]
    assert prefill_calls[0] >= engine.manifest.enc_length and sum(prefill_calls) == len(ids)
    assert len(prefill_calls) == -(-len(ids) // engine.manifest.max_prompt_len)
    _expect_pytorch(model, ids, num_pad, tokens, logits, CASES[case])


def test_read2x_fills_the_pad_region_with_context(exported: dict[str, Exported]) -> None:
    model = exported["example"].model
    engine = Engine.load(exported["example"].engine)
    context, question = "ab:12, cd:34, ef:56.", "cd:"
    params = SamplingParams(max_new_tokens=40)
    prompt = build_prompt(context, question, pad="read2x")
    ids, fill = list(prompt.text.encode()), list(prompt.fill.encode())
    missing = engine.manifest.enc_length - len(ids)
    region = (fill * (missing // len(fill) + 1))[-missing:]  # the tail of the repeated context, unmasked
    _expect_pytorch(model, region + ids, 0, *_generate(engine, prompt, params)[:2], params)

    tokens, logits, _ = _generate(engine, build_prompt(context, question), params)
    _expect_pytorch(model, *_left_padded(model, ids), tokens, logits, params)


def test_continuous_batching_matches_sequences_alone(exported: dict[str, Exported]) -> None:
    engine = Engine.load(exported["random-jrt"].engine)
    lengths = _lengths(engine)
    sampled = {"temperature": 0.9, "top_k": 50, "top_p": 0.95}
    specs = [  # prompt length, new tokens, sampling: they finish at different times, so slots free up
        (lengths["short"], 40, {}),
        (lengths["chunked"], 12, {}),
        (lengths["long"], 25, {**sampled, "seed": 7}),
        (3, 30, {}),
        (lengths["long"] + 5, 8, {**sampled, "seed": 11}),
        (lengths["short"] + 3, 20, {}),
    ]
    jobs = [(_prompt(n)[::-1], SamplingParams(max_new_tokens=m, **kw)) for n, m, kw in specs]
    alone = [[t.id for t in engine.session(max_batch=1).generate(p, params)] for p, params in jobs]

    session = engine.session()
    recorder = recording(session)
    requests = [session.request(p, params) for p, params in jobs]
    together: dict[int, list[int]] = {id(r): [] for r in requests}
    for token in session.stream(requests):
        together[id(token.request)].append(token.id)
    assert [together[id(r)] for r in requests] == alone
    assert max(b for b, _ in recorder.shapes) == engine.manifest.max_batch == 3
    decode_calls = sum(1 for _, length in recorder.shapes if length == 1)
    assert decode_calls < sum(len(a) - 1 for a in alone)  # sequences shared their steps
    assert not session.busy


def test_waiting_requests_prefill_together(exported: dict[str, Exported]) -> None:
    """Requests that wait together share their prefill calls, one row each, longest first; every row's
    first logits and tokens are what it gets prefilled alone (short prompts padded to the encoder)."""
    engine = Engine.load(exported["random-jrt"].engine)
    enc, chunk = engine.manifest.enc_length, engine.manifest.max_prompt_len
    lengths = _lengths(engine)
    prompts = [_prompt(n)[::-1] for n in (lengths["short"], lengths["chunked"], lengths["long"])]
    params = SamplingParams(max_new_tokens=6, stop_on_eos=False)
    alone = [_generate(engine, prompt, params)[:2] for prompt in prompts]

    session = engine.session()
    recorder = recording(session)
    requests = [session.request(prompt, params) for prompt in prompts]
    together: dict[int, list[int]] = {id(r): [] for r in requests}
    for token in session.stream(requests):
        together[id(token.request)].append(token.id)
    assert [together[id(r)] for r in requests] == [tokens for tokens, _ in alone]

    short, long_ = enc, lengths["long"]  # the short prompt is padded up to the encoder
    chunked = lengths["chunked"]
    expected_calls = [(3, enc), (2, long_ - short), (1, chunk), (1, chunked - long_ - chunk)]
    assert recorder.shapes[:4] == expected_calls
    first_logits = [recorder.logits[0][2], recorder.logits[3][0], recorder.logits[1][1]]
    for got, (_, logits) in zip(first_logits, alone, strict=True):
        np.testing.assert_allclose(got, logits[0], rtol=1e-4, atol=1e-4)


class ForceToken(PoolWrapper):
    """Makes ``token_id`` the likeliest token from the ``at``-th call on."""

    def __init__(self, pool, token_id: int, at: int) -> None:
        super().__init__(pool)
        self.token_id, self.at, self.calls = token_id, at, 0

    def run(self, slots, input_ids, start_pos, num_pad):
        logits = self.pool.run(slots, input_ids, start_pos, num_pad)
        self.calls += 1
        if self.calls >= self.at:
            logits = logits.copy()
            logits[:, self.token_id] = 1e9
        return logits


def test_session_finishing_and_bad_requests(exported: dict[str, Exported]) -> None:
    engine = Engine.load(exported["random-jrt"].engine)
    eos = engine.manifest.eos_token_id
    session = engine.session()
    session.pool = ForceToken(session.pool, eos, at=4)  # the prefill, then decode steps 2, 3, 4
    tokens = list(session.generate("ab:12", SamplingParams(max_new_tokens=50)))
    assert [(t.id == eos, t.finish_reason) for t in tokens] == [(False, None)] * 3 + [(True, "eos")]
    session.pool = session.pool.pool
    tokens = list(session.generate("ab:12", SamplingParams(max_new_tokens=6, stop_on_eos=False)))
    assert [t.finish_reason for t in tokens] == [None] * 5 + ["length"]
    assert tokens[-1].request.stats.generated_tokens == 6

    stream = session.generate("ab:12", SamplingParams(max_new_tokens=50))
    next(stream)
    assert session.busy
    stream.close()  # a client that went away: its slot is free again
    assert not session.busy

    with pytest.raises(JrtcError, match="empty"):
        list(session.generate([]))
    with pytest.raises(JrtcError, match="outside the model's vocabulary"):
        list(session.generate([1, 2, engine.manifest.vocab_size]))
    assert not session.busy
    with pytest.raises(JrtcError, match="max_batch"):
        engine.session(max_batch=engine.manifest.max_batch + 1)


def test_decode_memory_is_constant(exported: dict[str, Exported]) -> None:
    engine = Engine.load(exported["example"].engine)
    session = engine.session(max_batch=1)
    buffers = [(a.__array_interface__["data"][0], a.nbytes) for a in session.pool.states]
    process = psutil.Process()
    params = SamplingParams(max_new_tokens=5001, stop_on_eos=False)
    samples = {}
    tracemalloc.start()
    try:
        for i, _ in enumerate(session.generate(_prompt(40), params)):
            if i in (1000, 5000):
                samples[i] = (process.memory_info().rss, tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    rss_growth = samples[5000][0] - samples[1000][0]
    python_growth = samples[5000][1] - samples[1000][1]
    # Measured here: Python allocations within +-2 KiB, RSS within 0.6 MiB. Keeping each generated id in a
    # list would add 32 KiB over these 4,000 steps; keeping each logits row, 4.7 MiB.
    assert python_growth < 16 * 1024, python_growth
    assert rss_growth < 2 * 2**20, rss_growth
    assert [(a.__array_interface__["data"][0], a.nbytes) for a in session.pool.states] == buffers
    assert session.positions[0] == engine.manifest.enc_length + 5000


def test_runtime_imports_neither_torch_nor_triton(exported: dict[str, Exported]) -> None:
    code = f"""
import sys
import jrtc.runtime.cli
from jrtc.runtime import Engine, SamplingParams, build_prompt
from jrtc.runtime.sampling import Draw, sample
engine = Engine.load({str(exported["example"].engine)!r})
assert len(list(engine.session().generate("ab:", SamplingParams(max_new_tokens=3)))) == 3
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "triton"))
assert not heavy, heavy
"""
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- the CLI ----------------------------------------------------------------------------------------


def _run(*args: object) -> Result:
    return CliRunner().invoke(main, ["run", *map(str, args)])


@pytest.fixture
def prompt_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompt.txt"
    path.write_text("ab:12, cd:34, ef:56. cd:", encoding="utf-8")
    return path


def test_cli_streams_the_completion(exported: dict[str, Exported], prompt_file: Path) -> None:
    engine = Engine.load(exported["example"].engine)
    expected = list(engine.session().generate(prompt_file.read_text(), SamplingParams(max_new_tokens=30)))
    result = _run(exported["example"].engine, "--prompt", prompt_file, "--max-new-tokens", 30)
    assert result.exit_code == 0, result.output
    assert result.stdout == "".join(t.text for t in expected)
    padded = engine.manifest.enc_length
    assert f"prompt 24 tokens ({padded} with padding)" in result.stderr and "tokens/s" in result.stderr

    result = _run(
        exported["example"].engine / "model.onnx",
        "--prompt",
        prompt_file,
        "--max-new-tokens",
        30,
        "--json",
        "--quiet",
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(x["id"], x["text"]) for x in lines[:-1]] == [(t.id, t.text) for t in expected]
    stats = lines[-1]["stats"]
    assert stats["prompt_tokens"] == 24 and stats["generated_tokens"] == 30 and stats["state_bytes"] > 0
    assert result.stderr == ""


def test_cli_jrt_prompt_and_stop(exported: dict[str, Exported], tmp_path: Path) -> None:
    context = tmp_path / "context.txt"
    context.write_text("ab:12, cd:34, ef:56.\n", encoding="utf-8")
    result = _run(
        exported["example"].engine,
        "--prompt",
        context,
        "--question",
        "cd:",
        "--show-prompt",
        "--stop",
        "\n",
        "--max-new-tokens",
        40,
    )
    assert result.exit_code == 0, result.output
    assert "cd: ab:12, cd:34, ef:56.\nab:12, cd:34, ef:56. cd:" in result.stderr
    assert "\n" not in result.stdout
    engine = Engine.load(exported["example"].engine)
    prompt = build_prompt(context.read_text(), "cd:")
    tokens = list(engine.session().generate(prompt, SamplingParams(max_new_tokens=40, stop=("\n",))))
    assert result.stdout == "".join(t.text for t in tokens)


def _cli_process(*args: object, stderr: int = subprocess.DEVNULL) -> subprocess.Popen:
    command = [sys.executable, "-c", "from jrtc.cli import main; main()", "run", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)


def test_cli_streams_before_the_end(exported: dict[str, Exported], prompt_file: Path) -> None:
    # A generation far too long to finish: the first token must arrive while it runs.
    process = _cli_process(
        exported["example"].engine, "--prompt", prompt_file, "--json", "--max-new-tokens", 1_000_000
    )
    try:
        assert set(json.loads(process.stdout.readline())) == {"id", "text"}
    finally:
        process.kill()
        process.wait()


def test_cli_quits_quietly_when_the_reader_leaves(exported: dict[str, Exported], prompt_file: Path) -> None:
    process = _cli_process(
        exported["example"].engine,
        "--prompt",
        prompt_file,
        "--max-new-tokens",
        1_000_000,
        stderr=subprocess.PIPE,
    )
    process.stdout.read(5)
    process.stdout.close()  # like `jrtc run ... | head -c 5`; click turns the broken pipe into exit 1
    stderr = process.stderr.read()
    assert process.wait(timeout=60) == 1
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


@pytest.fixture
def engine_copy(exported: dict[str, Exported], tmp_path: Path) -> Path:
    return Path(shutil.copytree(exported["example"].engine, tmp_path / "engine"))


def _replace(engine_dir: Path, name: str, data: bytes, update_checksum: bool) -> None:
    import hashlib

    (engine_dir / name).write_bytes(data)
    manifest = json.loads((engine_dir / "jrtc.json").read_text())
    if update_checksum and name in manifest.get("checksums", {}):
        manifest["checksums"][name] = "sha256:" + hashlib.sha256(data).hexdigest()
        (engine_dir / "jrtc.json").write_text(json.dumps(manifest))


def _gpt2_ordered_bytes() -> str:
    spec = json.loads(byte_level_tokenizer_json())
    spec["model"]["vocab"] = {c: i for i, c in enumerate(sorted(spec["model"]["vocab"], key=ord))}
    return json.dumps(spec)


def _with_added_tokens(count: int) -> str:
    tokenizer = Tokenizer.from_str(byte_level_tokenizer_json())
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(count)])
    return tokenizer.to_str()


def _break_engine(engine_dir: Path, case: str) -> None:
    if case == "no-engine-dir":
        shutil.rmtree(engine_dir)
    elif case.startswith("missing-"):
        (engine_dir / case.removeprefix("missing-")).unlink()
    elif case == "newer-format":
        manifest = json.loads((engine_dir / "jrtc.json").read_text())
        (engine_dir / "jrtc.json").write_text(json.dumps({**manifest, "format_version": 2}))
    elif case == "corrupt-onnx":
        data = bytearray((engine_dir / "model.onnx").read_bytes())
        data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
        _replace(engine_dir, "model.onnx", bytes(data), update_checksum=False)
    elif case == "garbage-onnx":  # the checksum matches, so ONNX Runtime is the one to notice
        _replace(engine_dir, "model.onnx", b"not an onnx model at all" * 100, update_checksum=True)
    elif case == "tokenizer-too-large":
        _replace(engine_dir, "tokenizer.json", _with_added_tokens(10).encode(), update_checksum=True)
    elif case == "tokenizer-other-space":
        _replace(engine_dir, "tokenizer.json", _gpt2_ordered_bytes().encode(), update_checksum=True)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no-engine-dir", "engine not found"),
        ("missing-jrtc.json", "no jrtc.json"),
        ("missing-model.onnx", "missing model.onnx"),
        ("missing-tokenizer.json", "missing tokenizer.json"),
        ("newer-format", "format version 2"),
        ("corrupt-onnx", "model.onnx is corrupted"),
        ("garbage-onnx", "model.onnx is corrupted"),
        ("tokenizer-too-large", "266 tokens"),
        ("tokenizer-other-space", "encodes a space as 220"),
    ],
)
def test_cli_bad_engine(engine_copy: Path, prompt_file: Path, case: str, message: str) -> None:
    _break_engine(engine_copy, case)
    result = _run(engine_copy, "--prompt", prompt_file)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("jrtc: error:"), result.stderr
    assert message in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "prompt file not found"),
        (b"", "is empty"),
        (b" \n\t\n", "is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is binary"),
        (b"caf\xe9 latin-1", "not UTF-8"),
    ],
)
def test_cli_bad_prompt_file(
    exported: dict[str, Exported], tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "prompt.txt"
    if content is not None:
        path.write_bytes(content)
    result = _run(exported["example"].engine, "--prompt", path)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("jrtc: error:"), result.stderr
    assert message in result.stderr
