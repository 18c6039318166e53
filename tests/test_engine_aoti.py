"""AOTInductor engines (``--target cpu --format aoti``, the package kind of ``--target cuda``) against the ONNX
engine of the same checkpoint, the device sampler against the host's, and the C++ CLI against ``jrtc run``.

Every package here runs with AOTI_RUNTIME_CHECK_INPUTS=1 (conftest.py): each call's shapes, strides and dtypes
are checked against what the programs were compiled for.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from jrt_fixtures import export_with_cli, hf_config, random_state_dict, write_hf_checkpoint
from pool_wrappers import recording

from jrtc.cli import main
from jrtc.errors import JrtcError
from jrtc.example import CHECKPOINT
from jrtc.runtime import Engine, SamplingParams
from jrtc.runtime.backends import torch_sampling
from jrtc.runtime.sampling import Draw, sample

TEXT = "ab:12, cd:34, ef:56, gh:78, ij:90, kl:13, mn:57, op:91, qr:35, st:79. The quick brown fox jumps. "

# name -> (HF options or None for the built-in example, export options)
MODELS = {
    "example": (None, ["--max-prompt-len", "160", "--max-batch", "4"]),
    "random-jrt": (  # every layer type of a JRT checkpoint, a padded vocabulary, an end-of-sequence id
        {
            "layer_types": ["conv", "pla", "swa", "conv", "pla", "swa"],
            "d_model": 64,
            "heads": 4,
            "enc_length": 24,
            "window_size": 16,
            "vocab_size": 300,
        },
        ["--max-prompt-len", "40", "--max-batch", "3"],
    ),
}


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """name -> {"onnx": engine dir, "aoti": engine dir, "checkpoint": what both were exported from}."""
    root = tmp_path_factory.mktemp("aoti")
    out = {}
    for name, (hf_options, options) in MODELS.items():
        checkpoint = CHECKPOINT
        if hf_options is not None:
            hf = hf_config(**hf_options)
            hf["eos_token_id"] = 10
            checkpoint = write_hf_checkpoint(root / f"{name}-ckpt", hf, random_state_dict(hf, seed=3))
        out[name] = {"checkpoint": checkpoint}
        for fmt in ("onnx", "aoti"):
            export_with_cli(checkpoint, root / f"{name}-{fmt}", [*options, "--format", fmt])
            out[name][fmt] = root / f"{name}-{fmt}"
    return out


def _prompt(length: int) -> list[int]:
    return list((TEXT * (length // len(TEXT) + 1)).encode()[:length])


def _lengths(engine: Engine) -> dict[str, int]:
    m = engine.manifest
    return {
        "short": max(m.enc_length // 2, 5),  # left-padded to the encoder
        "long": (m.enc_length + m.max_prompt_len) // 2 + 1,  # past the encoder, one call
        "chunked": 2 * m.max_prompt_len + 7,  # three calls
        "one-token tail": m.max_prompt_len + 1,  # the second call has L = 1: the decode program
    }


def _run(engine: Engine, prompt: list[int], params: SamplingParams) -> tuple[list[int], np.ndarray]:
    session = engine.session(max_batch=1)
    recorder = recording(session)
    tokens = [t.id for t in session.generate(prompt, params)]
    return tokens, np.stack([logits[0] for logits in recorder.logits[-len(tokens) :]])


GREEDY = SamplingParams(max_new_tokens=257, stop_on_eos=False)  # the first token, then 256 decode steps


def test_manifest_says_what_the_package_is(engines: dict[str, dict[str, Path]]) -> None:
    manifest = json.loads((engines["example"]["aoti"] / "jrtc.json").read_text())
    assert (manifest["target"], manifest["format"], manifest["backend"], manifest["engine"]) == (
        "cpu",
        "aoti",
        "aoti",
        "model.pt2",
    )
    assert manifest["device"] == "cpu" and manifest["dtype"] == "float32" and manifest["state_in_place"]
    assert manifest["programs"] == {
        "prefill": {"batch": [1, 4], "length": [2, 160]},
        "decode": {"batch": [1, 4], "length": [1, 1]},
    }
    assert manifest["outputs"] == ["logits"] and manifest["built_with"]["torch"] == torch.__version__
    assert set(manifest["checksums"]) == {"model.pt2", "tokenizer.json"}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("case", ["short", "long", "chunked", "one-token tail"])
def test_aoti_matches_onnx(engines: dict[str, dict[str, Path]], name: str, case: str) -> None:
    """Same greedy tokens over 256 decode steps; logits within 1e-4 of the largest, at every step."""
    onnx, aoti = Engine.load(engines[name]["onnx"]), Engine.load(engines[name]["aoti"])
    prompt = _prompt(_lengths(onnx)[case])
    expected_tokens, expected_logits = _run(onnx, prompt, GREEDY)
    tokens, logits = _run(aoti, prompt, GREEDY)
    assert tokens == expected_tokens
    scale = np.abs(expected_logits).max(axis=-1, keepdims=True)
    assert (np.abs(logits - expected_logits) <= 1e-4 * scale).all(), np.abs(logits - expected_logits).max()


def test_batched_prefill_and_decode_match_alone(engines: dict[str, dict[str, Path]]) -> None:
    engine = Engine.load(engines["random-jrt"]["aoti"])
    lengths = _lengths(engine)
    sampled = {"temperature": 0.8, "top_k": 40, "top_p": 0.9}
    jobs = [
        (_prompt(lengths["short"]), SamplingParams(max_new_tokens=30, stop_on_eos=False)),
        (_prompt(lengths["chunked"])[::-1], SamplingParams(max_new_tokens=9, seed=4, **sampled)),
        (_prompt(lengths["long"]), SamplingParams(max_new_tokens=20, seed=5, stop_on_eos=False, **sampled)),
        (_prompt(3), SamplingParams(max_new_tokens=12, stop_on_eos=False)),
    ]
    alone = [[t.id for t in engine.session(max_batch=1).generate(p, params)] for p, params in jobs]
    session = engine.session()
    recorder = recording(session)
    requests = [session.request(p, params) for p, params in jobs]
    together: dict[int, list[int]] = {id(r): [] for r in requests}
    for token in session.stream(requests):
        together[id(token.request)].append(token.id)
    assert [together[id(r)] for r in requests] == alone
    assert recorder.shapes[0] == (3, engine.manifest.enc_length)  # three waiting requests, one call
    assert not session.busy


def test_state_pool_stays_put_and_is_written_in_place(engines: dict[str, dict[str, Path]]) -> None:
    engine = Engine.load(engines["example"]["aoti"])
    session = engine.session(max_batch=2)
    pool = session.pool
    buffers = [(s.data_ptr(), s.shape, s.dtype) for s in pool.states]
    list(session.generate(_prompt(30), SamplingParams(max_new_tokens=300, stop_on_eos=False)))
    assert [(s.data_ptr(), s.shape, s.dtype) for s in pool.states] == buffers
    assert all(bool(s[0].abs().sum() > 0) for s in pool.states), "the programs did not write the pool"
    assert session.positions[0] == engine.manifest.enc_length + 299


@pytest.mark.parametrize("seed", range(4))
def test_device_sampler_draws_the_host_samplers_tokens(seed: int) -> None:
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((6, 300)) * 3).astype(np.float32)
    settings = [
        SamplingParams(),
        SamplingParams(temperature=1.0, seed=seed),
        SamplingParams(temperature=0.7, top_k=5, seed=seed + 1),
        SamplingParams(temperature=1.3, top_p=0.8, seed=seed + 2),
        SamplingParams(temperature=1.0, top_k=50, top_p=0.5, seed=seed + 3),
        SamplingParams(temperature=2.0, top_k=1, seed=seed + 4),
    ]
    for index in range(20):
        draws = [Draw(params, params.seed or 0, index) for params in settings]
        host = [sample(row, draw) for row, draw in zip(logits, draws, strict=True)]
        assert torch_sampling.sample(torch.from_numpy(logits), draws) == host


def test_kernel_programs_trace_with_their_full_shape_ranges(tmp_path: Path) -> None:
    """The cuda target's programs (the model with the Triton kernels), traced here with the kernels run by the
    interpreter: the kernel ops stay whole in the graph, and their launch code adds no guard on B or L (a
    heuristic reading a shape would have narrowed the ranges or failed the export). The model has every
    layer type (the built-in example has no sliding-window layer)."""
    from jrtc.checkpoint import load_checkpoint
    from jrtc.export.aoti import export_program

    hf = hf_config(**MODELS["random-jrt"][0])
    model = load_checkpoint(write_hf_checkpoint(tmp_path / "ckpt", hf, random_state_dict(hf)), use_kernels=True)
    kernels = {"jrtc.pla_encode.default", "jrtc.pla_causal.default", "jrtc.sliding_window_attention.default"}
    programs = [
        ("prefill", [(1, 4), (2, 160)], kernels),
        ("decode", [(1, 4)], kernels - {"jrtc.pla_encode.default"}),
    ]
    for name, ranges, expected_ops in programs:
        program = export_program(model, name, max_batch=4, max_prompt_len=160)
        assert sorted((r.lower, r.upper) for r in program.range_constraints.values()) == ranges
        ops = {str(node.target) for node in program.graph.nodes if str(node.target).startswith("jrtc.")}
        assert ops == expected_ops  # decode continues sequences: no encoder
    pla = [
        block.mixer
        for block in model.transformer.layers
        if block.mixer.__class__.__name__ == "PrefixLinearAttention"
    ]
    assert pla and all(mixer.starts_sequences for mixer in pla)


def test_cpu_runtime_loads_torch_only_for_aoti(engines: dict[str, dict[str, Path]]) -> None:
    code = f"""
import sys
from jrtc.runtime import Engine
Engine.load({str(engines["example"]["onnx"])!r})
assert "torch" not in sys.modules
Engine.load({str(engines["example"]["aoti"])!r})
assert "torch" in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_gpu_engine_checks_pass_on_cpu_packages(
    engines: dict[str, dict[str, Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The correctness half of benchmarks/gpu_engine.sh (``engine_cuda.py --check``), on CPU packages laid out
    as that script lays out its cuda ones: it runs and finds them right, so a GPU's few minutes are not spent
    on a script that rotted where nothing ran it."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import engine_cuda
    from _bench_common import Log

    for name, target in {
        "example-cpu": engines["example"]["onnx"],
        "example-cuda-float32": engines["example"]["aoti"],
        "example-cuda-bfloat16": engines["example"]["aoti"],
        "jrt360m-cuda": engines["random-jrt"]["aoti"],
        "jrt360m.pt": engines["random-jrt"]["checkpoint"],
    }.items():
        (tmp_path / name).symlink_to(target)
    log = Log(quiet=True)
    example = engine_cuda.check_example(tmp_path, log)
    assert len(example) == 6 and all(r["greedy_equal"] and r["logits_rel_err"] < 1e-4 for r in example.values())
    m = Engine.load(engines["random-jrt"]["aoti"]).manifest
    big = engine_cuda.check_big(tmp_path, log, steps=8, lengths=(m.enc_length // 2, 2 * m.max_prompt_len + 7))
    assert len(big) == 2, big
    for r in big.values():
        assert r["greedy_agreement"] == 1.0 and r["logits_rel_err_max"] < 1e-4, r


def _edit_manifest(engine_dir: Path, **fields: object) -> None:
    manifest = json.loads((engine_dir / "jrtc.json").read_text())
    manifest.update(fields)
    (engine_dir / "jrtc.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"built_with": {"torch": "1.13.0"}}, "built with torch 1.13.0"),
        pytest.param(
            {"device": "cuda", "gpu": "NVIDIA H200", "compute_capability": [9, 0]},
            "is a CUDA engine (built on NVIDIA H200, compute capability 9.0) and this machine has no CUDA GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU"),
        ),
    ],
)
def test_engine_from_elsewhere_gets_one_line(
    engines: dict[str, dict[str, Path]], tmp_path: Path, fields: dict, message: str
) -> None:
    engine_dir = Path(shutil.copytree(engines["example"]["aoti"], tmp_path / "engine"))
    _edit_manifest(engine_dir, **fields)
    with pytest.raises(JrtcError, match="^.*" + message.replace("(", r"\(").replace(")", r"\)")):
        Engine.load(engine_dir)
    result = CliRunner().invoke(
        main, ["run", str(engine_dir), "--prompt", str(CHECKPOINT.parent / "context.txt")]
    )
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and message in result.stderr


def test_corrupted_package_gets_one_line(engines: dict[str, dict[str, Path]], tmp_path: Path) -> None:
    engine_dir = Path(shutil.copytree(engines["example"]["aoti"], tmp_path / "engine"))
    (engine_dir / "model.pt2").write_bytes(b"not a zip archive" * 100)
    with pytest.raises(JrtcError, match="model.pt2 is corrupted"):  # the checksum catches it first
        Engine.load(engine_dir)
    with pytest.raises(JrtcError, match="AOTInductor cannot load it"):
        Engine.load(engine_dir, verify=False)


# ---- C++ ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jrtc_cpp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The C++ CLI, built from cpp/ the way the README says."""
    build = tmp_path_factory.mktemp("cpp-build")
    source = Path(__file__).resolve().parents[1] / "cpp"
    prefix = torch.utils.cmake_prefix_path
    subprocess.run(
        ["cmake", "-S", str(source), "-B", str(build), f"-DCMAKE_PREFIX_PATH={prefix}"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["cmake", "--build", str(build), "-j", str(os.cpu_count() or 1)], check=True, capture_output=True
    )
    return build / "jrtc-cpp"


def _jrtc_run_ids(engine_dir: Path, prompt: Path, max_new_tokens: int) -> list[int]:
    args = [
        "run",
        str(engine_dir),
        "--prompt",
        str(prompt),
        "--max-new-tokens",
        str(max_new_tokens),
        "--json",
    ]
    result = CliRunner().invoke(main, [*args, "--quiet"])
    assert result.exit_code == 0, result.output
    return [json.loads(line)["id"] for line in result.stdout.splitlines()[:-1]]


@pytest.mark.parametrize("name", list(MODELS))
def test_cpp_cli_generates_what_jrtc_run_does(
    engines: dict[str, dict[str, Path]], jrtc_cpp: Path, tmp_path: Path, name: str
) -> None:
    engine_dir = engines[name]["aoti"]
    for length in _lengths(Engine.load(engine_dir)).values():
        prompt = tmp_path / f"prompt-{length}.txt"
        prompt.write_bytes(bytes(_prompt(length)))
        expected = _jrtc_run_ids(engine_dir, prompt, 64)
        ids = ",".join(map(str, prompt.read_bytes()))
        result = subprocess.run(
            [str(jrtc_cpp), str(engine_dir), "--ids", ids, "--max-new-tokens", "64"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert [int(t) for t in result.stdout.split()] == expected


def test_cpp_cli_text_and_errors(engines: dict[str, dict[str, Path]], jrtc_cpp: Path) -> None:
    engine_dir = engines["example"]["aoti"]
    ids = ",".join(map(str, b"b:4, k:7, r:2. k:"))
    text = subprocess.run(
        [str(jrtc_cpp), str(engine_dir), "--ids", ids, "--max-new-tokens", "6", "--text"],
        capture_output=True,
        check=True,
    ).stdout
    numbers = subprocess.run(
        [str(jrtc_cpp), str(engine_dir), "--ids", ids, "--max-new-tokens", "6"],
        capture_output=True,
        text=True,
    ).stdout
    assert text == bytes(int(t) for t in numbers.split())
    for args, code, message in [
        ([str(engine_dir), "--ids", "1,x"], 2, "--ids takes comma-separated token ids"),
        ([str(engine_dir), "--ids", "999"], 1, "token id 999 is outside the vocabulary (0..255)"),
        ([str(engine_dir.parent / "nowhere"), "--ids", "1"], 1, "not found"),
        ([str(engine_dir)], 2, "--ids takes"),
    ]:
        result = subprocess.run([str(jrtc_cpp), *args], capture_output=True, text=True)
        assert result.returncode == code and message in result.stderr.splitlines()[0], result.stderr
