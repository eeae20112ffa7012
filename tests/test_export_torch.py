"""PyTorch -> ONNX export: parity on fresh shapes, honest divergences caught, manifest, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

import fixtures_models as fm  # noqa: E402

from recall_engine.exporters.manifest import ManifestError, ModelManifest  # noqa: E402
from recall_engine.exporters.torch_export import (  # noqa: E402
    ParityError,
    export_torch,
    load_factory,
    state_dict_sha256,
)

pytestmark = pytest.mark.train
ROOT = Path(__file__).resolve().parent.parent


def _own_check(module, example, folder: Path, shapes) -> None:
    """Compare ORT with PyTorch on inputs this test draws itself (not the exporter's)."""
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    gen = torch.Generator().manual_seed(123)
    for batch, seq in shapes:
        feeds = []
        for i, x in enumerate(example):
            if x.dtype.is_floating_point:
                feeds.append(torch.randn(batch, *x.shape[1:], generator=gen))
            else:  # item ids first, then a 0/1 mask
                high = fm.NUM_ITEMS if i == 0 else 2
                feeds.append(torch.randint(0, high, (batch, seq), generator=gen))
        with torch.inference_mode():
            want = module(*feeds).numpy()
        got = session.run(None, {n: f.numpy() for n, f in zip(names, feeds, strict=True)})[0]
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize(
    "factory",
    [fm.mlp_factory, fm.bag_factory, fm.gru_factory, fm.attention_factory],
    ids=lambda f: f.__name__,
)
def test_exported_model_matches_pytorch_at_other_batch_sizes_and_lengths(factory, tmp_path):
    module, example = factory()
    manifest = export_torch(module, example, tmp_path)

    assert manifest.parity.max_abs <= 1e-4
    assert [list(c) for c in manifest.parity.cases] == [[1, 5], [3, 17], [7, 2]]
    _own_check(module, example, tmp_path, [(2, 3), (11, 12), (1, 1)])


def test_history_encoder_inputs_are_named_with_batch_and_sequence_axes(tmp_path):
    module, example = fm.gru_factory()
    manifest = export_torch(module, example, tmp_path)

    assert [(s.name, s.dtype, s.shape) for s in manifest.inputs] == [
        ("item_ids", "int64", ("batch", "sequence")),
        ("mask", "int64", ("batch", "sequence")),
    ]
    assert [(s.name, s.shape) for s in manifest.outputs] == [("output", ("batch", 16))]
    assert manifest.dims == 16
    assert manifest.kind == "torch"


def test_manifest_records_hashes_and_reads_back(tmp_path):
    module, example = fm.mlp_factory()
    written = export_torch(module, example, tmp_path, input_names=["x"], output_names=["y"])

    read = ModelManifest.read(tmp_path)
    assert read == written
    assert read.source_hash == state_dict_sha256(fm.mlp_factory()[0])
    import hashlib

    assert read.model_sha256 == hashlib.sha256((tmp_path / "model.onnx").read_bytes()).hexdigest()
    assert [s.name for s in read.inputs] == ["x"] and read.outputs[0].name == "y"


def test_manifest_read_names_the_missing_field(tmp_path):
    module, example = fm.mlp_factory()
    export_torch(module, example, tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    del raw["model_sha256"]
    (tmp_path / "manifest.json").write_text(json.dumps(raw))

    with pytest.raises(ManifestError, match="missing field 'model_sha256'"):
        ModelManifest.read(tmp_path)


def test_dynamo_exporter_passes_the_same_parity_check(tmp_path):
    module, example = fm.mlp_factory()
    manifest = export_torch(module, example, tmp_path, exporter="dynamo")

    assert manifest.producer["exporter"] == "dynamo"
    assert manifest.parity.max_abs <= 1e-4


def test_export_only_code_path_raises_parity_error_with_figures(tmp_path):
    module, example = fm.export_branch_factory()

    with pytest.raises(ParityError, match="max_abs=") as err:
        export_torch(module, example, tmp_path)

    assert err.value.max_abs > 0.1
    assert err.value.cases == ((1, 5), (3, 17), (7, 2))
    assert not (tmp_path / "manifest.json").exists()


def test_python_loop_over_sequence_length_raises_parity_error(tmp_path):
    module, example = fm.python_loop_factory()

    with pytest.raises(ParityError, match="ONNX Runtime failed on batch=1 sequence=5") as err:
        export_torch(module, example, tmp_path)

    assert "Python control flow" in str(err.value)


def test_load_factory_rejects_a_spec_without_colon():
    with pytest.raises(ValueError, match="MODULE:FACTORY"):
        load_factory("tests.fixtures_models.mlp_factory")


def test_cli_exports_a_factory_and_prints_parity(tmp_path, monkeypatch, capsys):
    from recall_engine.cli.main import main

    monkeypatch.chdir(ROOT)
    out = tmp_path / "mlp"
    rc = main(["export", "torch", "tests.fixtures_models:mlp_factory", "--out", str(out)])

    assert rc == 0
    assert "parity vs PyTorch: max_abs=" in capsys.readouterr().out
    assert ModelManifest.read(out).inputs[0].name == "features"


def test_cli_exits_non_zero_on_parity_failure(tmp_path, monkeypatch, capsys):
    from recall_engine.cli.main import main

    monkeypatch.chdir(ROOT)
    rc = main(
        ["export", "torch", "tests.fixtures_models:export_branch_factory", "--out", str(tmp_path)]
    )

    assert rc == 2
    assert "parity check FAILED" in capsys.readouterr().err


def test_large_weights_are_kept_beside_the_graph_mapped_by_onnx_runtime_and_checked(tmp_path):
    """An item table of 1.3 MB goes to model.onnx.data (ONNX external data): the graph
    file is small, ONNX Runtime maps the weights from the file (so the processes of a
    host share them) and answers as PyTorch does, and a changed byte in the weights is
    refused by name."""
    from recall_engine.runtime.encoders import OnnxModel

    torch.manual_seed(0)
    module = fm.BagOfItems(num_items=20_000, dim=16)
    example = (torch.randint(0, 20_000, (4, 7)),)
    manifest = export_torch(module, example, tmp_path)
    data = tmp_path / "model.onnx.data"
    assert set(manifest.data_files) == {"model.onnx.data"}
    assert (
        data.stat().st_size >= 20_000 * 16 * 4 and (tmp_path / "model.onnx").stat().st_size < 64_000
    )
    assert ModelManifest.read(tmp_path).data_files == manifest.data_files
    # readable by whoever may read the graph (onnx writes it owner-only)
    assert data.stat().st_mode & 0o777 == (tmp_path / "model.onnx").stat().st_mode & 0o777

    model = OnnxModel(tmp_path, device="cpu")
    maps = Path("/proc/self/maps").read_text()
    assert str(data.resolve()) in maps  # used in place, from the file
    ids = torch.randint(0, 20_000, (3, 5))
    with torch.inference_mode():
        want = module(ids).numpy()
    np.testing.assert_allclose(model.run({"item_ids": ids.numpy()}), want, atol=1e-5)

    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    with pytest.raises(ManifestError, match=r"model\.onnx\.data: missing, or its sha256 differs"):
        OnnxModel(tmp_path, device="cpu")


def test_small_models_stay_in_one_file(tmp_path):
    module, example = fm.mlp_factory()
    assert export_torch(module, example, tmp_path).data_files == {}
    assert not (tmp_path / "model.onnx.data").exists()
