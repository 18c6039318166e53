"""``jrtc export --target cpu``: the ONNX step graph against the PyTorch model, the engine directory against
docs/interfaces.md, and the export's failure modes (each a one-line error that leaves nothing behind)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from jrt_fixtures import hf_config, random_state_dict, write_hf_checkpoint
from tokenizers import Tokenizer, models, pre_tokenizers

from jrtc.checkpoint import load_checkpoint, save_checkpoint
from jrtc.cli import main
from jrtc.config import JRTConfig
from jrtc.errors import JrtcError
from jrtc.export import build, onnx_graph
from jrtc.model import JRTModel
from jrtc.tokenizer import byte_level_tokenizer_json

ENC = 16
WINDOW = 8  # a query sees itself and 4 previous tokens: decode soon wraps the ring
JRT_OPS = {"pla_encode", "pla_causal", "sliding_window_attention", "short_conv"}
MIXES = {
    "jrt": ("conv", "pla", "swa", "conv", "pla"),
    "based": ("swa", "la", "conv"),  # no encoder: no pla_encode node
}


def make_model(layer_types: tuple[str, ...], seed: int = 0) -> JRTModel:
    torch.manual_seed(seed)
    config = JRTConfig(
        vocab_size=256,
        d_model=64,
        n_layer=len(layer_types),
        n_head=4,
        n_inner=128,
        layer_types=layer_types,
        pla_heads=4,
        enc_length=ENC if "pla" in layer_types else 0,
        window_size=WINDOW,
        pad_token_id=32,
        eos_token_id=None,
    )
    model = JRTModel(config).eval().requires_grad_(False)
    for name, p in model.named_parameters():
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name.endswith("ln_f.weight"):
            p.uniform_(0.5, 1.5)  # away from all-ones, so that a norm's weight is really applied
    return model


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[JRTModel, Path]]:
    """One exported engine per layer mix, with the model it came from."""
    root = tmp_path_factory.mktemp("engines")
    out = {}
    for mix, layer_types in MIXES.items():
        model = make_model(layer_types)
        save_checkpoint(model, root / f"{mix}.pt")
        exported = build.export_engine(root / f"{mix}.pt", root / mix, tokenizer="bytes")
        out[mix] = (model, exported.directory)
    return out


class OnnxStep:
    """The step graph on ONNX Runtime, with the model's state dict convention (``pos`` included)."""

    def __init__(self, path: Path, model: JRTModel) -> None:
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.names = [n for n in model.state_spec() if n != "pos"]

    def __call__(
        self, ids: torch.Tensor, state: dict[str, torch.Tensor], num_pad: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        num_pad = torch.zeros(ids.shape[0], dtype=torch.int64) if num_pad is None else num_pad
        feed = {"input_ids": ids.numpy(), "start_pos": state["pos"].numpy(), "num_pad": num_pad.numpy()}
        feed.update({f"state.{n}": state[n].numpy() for n in self.names})
        logits, *next_state = self.session.run(None, feed)
        new = {"pos": state["pos"] + ids.shape[1]}
        new.update({n: torch.from_numpy(t) for n, t in zip(self.names, next_state, strict=True)})
        return torch.from_numpy(logits), new


def torch_step(
    model: JRTModel, ids: torch.Tensor, state: dict[str, torch.Tensor], num_pad: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    key_mask = None if num_pad is None else torch.arange(ids.shape[1])[None, :] >= num_pad[:, None]
    return model.forward_step(ids, state, key_mask, last_only=True)


def assert_close(
    a: dict[str, torch.Tensor] | torch.Tensor, b: dict[str, torch.Tensor] | torch.Tensor
) -> None:
    if isinstance(a, dict):
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-4, msg=name)
    else:
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def decode_both(model: JRTModel, step: OnnxStep, logits, state, steps: int = 12) -> None:
    """Greedy decode with each implementation on its own state; tokens and logits must agree throughout."""
    t_logits, t_state = logits
    o_logits, o_state = state
    for _ in range(steps):
        token = t_logits.argmax(-1, keepdim=True)
        assert torch.equal(token, o_logits.argmax(-1, keepdim=True))
        t_logits, t_state = torch_step(model, token, t_state)
        o_logits, o_state = step(token, o_state)
        assert_close(t_logits, o_logits)
    assert_close(t_state, o_state)


# ---- the graph ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mix", MIXES)
def test_graph_passes_full_check_with_jrtc_functions(engines, mix: str) -> None:
    model, directory = engines[mix]
    path = directory / "model.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path))
    functions = {(f.domain, f.name): f for f in graph.functions}
    custom = [n for n in graph.graph.node if n.domain]
    expected = JRT_OPS if mix == "jrt" else JRT_OPS - {"pla_encode"}
    assert {n.op_type for n in custom} == expected
    assert {n.domain for n in custom} == {"jrtc"}
    counts = {t: model.config.layer_types.count(t) for t in ("conv", "pla", "la", "swa")}
    assert sum(n.op_type == "short_conv" for n in custom) == counts["conv"]
    assert sum(n.op_type == "pla_causal" for n in custom) == counts["pla"] + counts["la"]
    assert sum(n.op_type == "pla_encode" for n in custom) == counts["pla"]
    assert sum(n.op_type == "sliding_window_attention" for n in custom) == counts["swa"]
    for node in custom:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_namespace"] == b"jrtc" and attrs["aot"] == 1  # what the TensorRT parser reads
        assert ("jrtc", node.op_type) in functions

    def standard_ops_only(function: onnx.FunctionProto) -> None:
        for node in function.node:
            if node.domain:
                standard_ops_only(functions[(node.domain, node.op_type)])

    for node in custom:
        standard_ops_only(functions[("jrtc", node.op_type)])
    assert {(o.domain, o.version) for o in graph.opset_import} == {("", 18), ("jrtc", 1)}


def test_graph_io_is_the_contract(engines) -> None:
    model, directory = engines["jrt"]
    graph = onnx.load(str(directory / "model.onnx"))
    names = [n for n in model.state_spec() if n != "pos"]
    assert [i.name for i in graph.graph.input] == ["input_ids", "start_pos", "num_pad"] + [
        f"state.{n}" for n in names
    ]
    assert [o.name for o in graph.graph.output] == ["logits"] + [f"next.{n}" for n in names]

    def dims(value: onnx.ValueInfoProto) -> list[int | str]:
        return [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]

    by_name = {v.name: v for v in [*graph.graph.input, *graph.graph.output]}
    batch, length = dims(by_name["input_ids"])
    assert isinstance(batch, str) and isinstance(length, str)  # dynamic B and L
    assert dims(by_name["logits"]) == [batch, model.config.vocab_size_padded]
    for name, (shape, _) in model.state_spec().items():
        if name != "pos":
            assert dims(by_name[f"state.{name}"]) == [batch, *shape] == dims(by_name[f"next.{name}"])


# ---- ONNX Runtime against PyTorch ----------------------------------------------------------------------
@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("prompt_len", [5, ENC, ENC + 11])
def test_onnxruntime_matches_pytorch(engines, mix: str, prompt_len: int) -> None:
    """Prefill (left-padded to enc_length when shorter, as the runtime does) then greedy decode."""
    model, directory = engines[mix]
    step = OnnxStep(directory / "model.onnx", model)
    gen = torch.Generator().manual_seed(prompt_len)
    prompts = torch.randint(0, 256, (2, prompt_len), generator=gen)
    pad = max(model.config.enc_length - prompt_len, 0)
    ids = torch.cat([torch.full((2, pad), model.config.pad_token_id), prompts], dim=1)
    num_pad = torch.tensor([pad, pad])
    t = torch_step(model, ids, model.init_state(2), num_pad)
    o = step(ids, model.init_state(2), num_pad)
    assert_close(t[0], o[0])
    assert_close(t[1], o[1])
    decode_both(model, step, t, o)


def test_chunked_prefill_and_mixed_positions(engines) -> None:
    """A prompt in two calls (the second causal from pos > 0), then a decode batch of rows at different
    positions, one of them in its first call's encoder-free continuation."""
    model, directory = engines["jrt"]
    step = OnnxStep(directory / "model.onnx", model)
    gen = torch.Generator().manual_seed(7)
    long_prompt = torch.randint(0, 256, (1, ENC + 9), generator=gen)
    short_prompt = torch.randint(0, 256, (1, ENC), generator=gen)

    first = (
        torch_step(model, long_prompt[:, :ENC], model.init_state(1)),
        step(long_prompt[:, :ENC], model.init_state(1)),
    )
    assert_close(first[0][1], first[1][1])
    second = torch_step(model, long_prompt[:, ENC:], first[0][1]), step(long_prompt[:, ENC:], first[1][1])
    assert_close(second[0][0], second[1][0])
    other = torch_step(model, short_prompt, model.init_state(1)), step(short_prompt, model.init_state(1))

    def batch(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: torch.cat([a[name], b[name]]) for name in a}

    t = torch.cat([second[0][0], other[0][0]]), batch(second[0][1], other[0][1])
    o = torch.cat([second[1][0], other[1][0]]), batch(second[1][1], other[1][1])
    assert t[1]["pos"].tolist() == [ENC + 9, ENC]
    decode_both(model, step, t, o, steps=2 * WINDOW)


def test_external_data_weights(engines, tmp_path: Path) -> None:
    """Past 2 GB the weights go to model.onnx.data; forced here with a zero threshold."""
    model, directory = engines["jrt"]
    graph = ir.load(directory / "model.onnx")
    written = onnx_graph.save(graph, tmp_path / "model.onnx", external_data_over=0)
    assert [p.name for p in written] == ["model.onnx", "model.onnx.data"]
    assert written[1].stat().st_size > written[0].stat().st_size
    onnx_graph.check(written[0])
    ids = torch.randint(0, 256, (1, ENC))
    assert_close(
        torch_step(model, ids, model.init_state(1))[0],
        OnnxStep(written[0], model)(ids, model.init_state(1))[0],
    )


# ---- the engine directory ------------------------------------------------------------------------------
def test_manifest_matches_the_contract(engines) -> None:
    model, directory = engines["jrt"]
    manifest = json.loads((directory / "jrtc.json").read_text())
    cfg = model.config
    assert sorted(p.name for p in directory.iterdir()) == ["jrtc.json", "model.onnx", "tokenizer.json"]
    assert manifest["format_version"] == 1
    assert (manifest["target"], manifest["backend"], manifest["engine"]) == (
        "cpu",
        "onnxruntime",
        "model.onnx",
    )
    assert JRTConfig.from_dict(manifest["model"]) == cfg
    assert (manifest["vocab_size"], manifest["vocab_size_padded"]) == (256, 256)
    assert (manifest["enc_length"], manifest["pad_token_id"], manifest["eos_token_id"]) == (ENC, 32, None)
    assert manifest["max_batch"] == 8 and manifest["max_prompt_len"] >= ENC
    spec = {n: v for n, v in model.state_spec().items() if n != "pos"}
    assert manifest["state"] == [
        {"name": n, "shape": list(shape), "dtype": str(dtype).removeprefix("torch.")}
        for n, (shape, dtype) in spec.items()
    ]
    assert manifest["state_bytes_per_sequence"] == sum(model.state_bytes()[n] for n in spec)
    assert manifest["feature_layout"] == "taylor2-sym153"
    graph = onnx.load(str(directory / "model.onnx"), load_external_data=False)
    assert manifest["inputs"] == [i.name for i in graph.graph.input]
    assert manifest["outputs"] == [o.name for o in graph.graph.output]
    assert manifest["tokenizer"] == "tokenizer.json"
    assert set(manifest["checksums"]) == {"model.onnx", "tokenizer.json"}
    assert manifest["built_with"]["opset"] == 18 and manifest["built_with"]["torch"] == torch.__version__
    assert (directory / "tokenizer.json").read_text() == byte_level_tokenizer_json()


def test_runtime_loads_the_engine(engines) -> None:
    """The runtime's reader (manifest, checksums, graph I/O, tokenizer fit) accepts what export wrote."""
    from jrtc.runtime import Engine

    model, directory = engines["jrt"]
    engine = Engine.load(directory)
    assert engine.manifest.enc_length == ENC
    ids = np.random.default_rng(0).integers(0, 256, (1, ENC))
    pool = engine.backend.new_pool(1)
    logits = pool.run(slice(0, 1), ids, np.zeros(1, np.int64), np.zeros(1, np.int64))
    assert_close(torch.from_numpy(logits), torch_step(model, torch.from_numpy(ids), model.init_state(1))[0])


# ---- the command and its failures -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(make_model(("swa", "pla")), path)
    return path


def jrtc_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(code: int, stderr: str, *fragments: str) -> None:
    """Nonzero exit, and after the progress lines one line of error: no traceback."""
    assert code != 0
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("jrtc export: ")]
    assert len(lines) == 1 and lines[0].startswith("jrtc: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_cli_export_writes_engine_and_summary(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "engine"
    code, stdout, stderr = jrtc_cli(
        "export",
        str(checkpoint),
        "--target",
        "cpu",
        "-o",
        str(out),
        "--tokenizer",
        "bytes",
        "--max-batch",
        "4",
        "--max-prompt-len",
        "64",
    )
    assert code == 0, stderr
    assert "tracing the step graph" in stderr  # progress per stage
    assert "model.onnx" in stdout and "state per sequence" in stdout and "input_ids" in stdout
    manifest = json.loads((out / "jrtc.json").read_text())
    assert (manifest["max_batch"], manifest["max_prompt_len"]) == (4, 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine"]  # no staging directory left
    # Exporting again replaces the engine directory; --quiet prints nothing.
    code, stdout, stderr = jrtc_cli(
        "export", str(checkpoint), "-o", str(out), "--tokenizer", "bytes", "--quiet"
    )
    assert (code, stdout, stderr) == (0, "", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine"]


def test_failed_export_leaves_nothing(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_check(path: Path) -> None:
        assert path.is_file()  # the graph was written into the staging directory...
        raise JrtcError("the exported graph is invalid: injected")

    monkeypatch.setattr(onnx_graph, "check", broken_check)
    code, _, stderr = jrtc_cli(
        "export", str(checkpoint), "-o", str(tmp_path / "engine"), "--tokenizer", "bytes"
    )
    assert_one_line_error(code, stderr, "injected")
    assert list(tmp_path.iterdir()) == []  # ...and it is gone


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_cuda_target_without_a_gpu(checkpoint: Path, tmp_path: Path) -> None:
    code, _, stderr = jrtc_cli("export", str(checkpoint), "--target", "cuda", "-o", str(tmp_path / "e"))
    assert_one_line_error(code, stderr, "--target cuda needs an NVIDIA GPU", "--format aoti")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--target", "cpu", "--dtype", "bfloat16"], "the cpu target exports float32"),
        (["--format", "wasm"], "Invalid value for '--format'"),
        (["--target", "cpu", "--format", "plan"], "target cpu writes onnx or aoti, not --format plan"),
        (["--target", "cuda", "--format", "onnx"], "target cuda writes aoti, not --format onnx"),
    ],
)
def test_format_and_dtype_errors(checkpoint: Path, tmp_path: Path, options: list[str], message: str) -> None:
    code, _, stderr = jrtc_cli(
        "export", str(checkpoint), *options, "-o", str(tmp_path / "e"), "--tokenizer", "bytes"
    )
    assert code != 0 and message in stderr
    assert list(tmp_path.iterdir()) == []


def write_tokenizer(path: Path, vocab: dict[str, int]) -> Path:
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", behavior="isolated")
    tokenizer.save(str(path))
    return path


def test_tokenizer_errors(checkpoint: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "engine")
    code, _, stderr = jrtc_cli("export", str(checkpoint), "-o", out)
    assert_one_line_error(code, stderr, "no tokenizer", "--tokenizer")

    code, _, stderr = jrtc_cli(
        "export", str(checkpoint), "-o", out, "--tokenizer", str(tmp_path / "missing.json")
    )
    assert_one_line_error(code, stderr, "tokenizer file not found")

    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    code, _, stderr = jrtc_cli("export", str(checkpoint), "-o", out, "--tokenizer", str(garbage))
    assert_one_line_error(code, stderr, "cannot read tokenizer")

    too_big = write_tokenizer(
        tmp_path / "big.json", {"[UNK]": 0, " ": 32, **{f"w{i}": 100 + i for i in range(300)}}
    )
    code, _, stderr = jrtc_cli("export", str(checkpoint), "-o", out, "--tokenizer", str(too_big))
    assert_one_line_error(code, stderr, "does not fit the model", "256")

    wrong_space = write_tokenizer(tmp_path / "space.json", {"[UNK]": 0, " ": 7, "a": 8})
    code, _, stderr = jrtc_cli("export", str(checkpoint), "-o", out, "--tokenizer", str(wrong_space))
    assert_one_line_error(code, stderr, "does not fit the model", "space")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.json", "garbage.json", "space.json"]


def test_hf_checkpoint_with_its_tokenizer_and_other_errors(tmp_path: Path) -> None:
    """An original-layout checkpoint directory with a tokenizer.json in it exports without --tokenizer."""
    hf = hf_config(["swa", "pla"], enc_length=ENC, window_size=WINDOW)
    checkpoint = write_hf_checkpoint(tmp_path / "JRT-tiny", hf, random_state_dict(hf))
    (checkpoint / "tokenizer.json").write_text(byte_level_tokenizer_json())
    out = tmp_path / "engine"
    code, _, stderr = jrtc_cli("export", str(checkpoint), "-o", str(out), "-q")
    assert code == 0, stderr
    assert (out / "tokenizer.json").read_text() == byte_level_tokenizer_json()
    model = load_checkpoint(checkpoint)
    ids = torch.randint(0, 256, (1, ENC + 3))
    onnx_logits = OnnxStep(out / "model.onnx", model)(ids, model.init_state(1))[0]
    assert_close(torch_step(model, ids, model.init_state(1))[0], onnx_logits)

    code, _, stderr = jrtc_cli("export", str(checkpoint), "-o", str(out), "--max-prompt-len", "8")
    assert_one_line_error(code, stderr, "shorter than enc_length")
    code, _, stderr = jrtc_cli("export", str(tmp_path / "nope.pt"), "-o", str(out), "--tokenizer", "bytes")
    assert_one_line_error(code, stderr, "checkpoint not found")
    code, _, stderr = jrtc_cli("export", str(checkpoint), "-o", str(checkpoint), "--tokenizer", "bytes")
    assert_one_line_error(code, stderr, "not a jrtc engine directory")
