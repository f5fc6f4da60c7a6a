"""The artifact store: layout, metadata, deletion, and no way out of an experiment's folder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from service._export import export_best
from service.artifacts import ArtifactPathError, ArtifactStore, content_type_for


@pytest.fixture
def store(tmp_path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


def put(store: ArtifactStore, exp_id: int, relpath: str, data: bytes = b"data") -> Path:
    path = store.experiment_dir(exp_id) / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- layout and metadata ------------------------------------------------------------------------------


def test_layout_follows_the_contract(store):
    assert store.experiment_dir(4) == store.root / "experiments" / "4"
    assert store.trial_dir(4, 2) == store.root / "experiments" / "4" / "trials" / "2"
    assert store.trial_dir(4, -1) == store.root / "experiments" / "4" / "trials" / "pretrain"
    assert store.best_dir(4) == store.root / "experiments" / "4" / "best"
    assert store.models_dir() == store.root / "models" and store.models_dir().is_dir()


@pytest.mark.parametrize("bad", [-1, True, "3", 1.5])
def test_experiment_ids_must_be_non_negative_ints(store, bad):
    with pytest.raises(ArtifactPathError, match="experiment_id"):
        store.experiment_dir(bad)


def test_trial_numbers_below_the_pretrain_trial_are_refused(store):
    with pytest.raises(ArtifactPathError, match="number"):
        store.trial_dir(1, -2)


def test_size_sha256_open_and_relpath(store):
    data = os.urandom(3 * (1 << 20) + 17)  # more than one read chunk
    path = put(store, 1, "best/model.pt2", data)
    rel = store.relpath(1, path)
    assert rel == "best/model.pt2"
    assert store.size(1, rel) == len(data)
    assert store.sha256(1, rel) == hashlib.sha256(data).hexdigest()
    with store.open(1, rel) as fh:
        assert fh.read() == data
    assert store.exists(1, rel) and not store.exists(1, "best/missing.pt2") and not store.exists(1, "../x")


def test_a_missing_artifact_is_file_not_found(store):
    put(store, 1, "best/model.pt2")
    for fn in (store.open, store.size, store.sha256):
        with pytest.raises(FileNotFoundError, match="best/model.onnx"):
            fn(1, "best/model.onnx")
    with pytest.raises(FileNotFoundError):
        store.open(1, "best")  # a folder is not an artifact


@pytest.mark.parametrize(("name", "expected"), [
    ("best/model.pt2", "application/octet-stream"),
    ("best/model.onnx", "application/onnx"),
    ("best/model.safetensors", "application/octet-stream"),
    ("best/masks.safetensors", "application/octet-stream"),
    ("best/compact.json", "application/json"),
    ("trials/0/trial.log", "text/plain; charset=utf-8"),
    ("something.bin", "application/octet-stream"),
])
def test_content_types(name, expected):
    assert content_type_for(name) == expected


# -- path tricks -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    "/etc/passwd",
    "../2/best/model.pt2",
    "best/../../2/best/model.pt2",
    "trials/../../../secret",
    "..",
    "best\\..\\..\\2\\model.pt2",
    "C:/Windows/win.ini",
    "~/secret",
    "best/model.pt2\x00.txt",
    "",
    ".",
])
def test_path_tricks_are_refused(store, bad):
    put(store, 2, "best/model.pt2", b"someone else's model")
    with pytest.raises(ArtifactPathError) as info:
        store.resolve(1, bad)
    assert info.value.field == "path" and str(info.value).startswith("path: ")
    with pytest.raises(ArtifactPathError):
        store.open(1, bad)


def test_a_symlink_out_of_the_experiment_is_refused(store, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    put(store, 2, "best/model.pt2", b"someone else's model")
    folder = store.experiment_dir(1) / "best"
    folder.mkdir(parents=True)
    (folder / "model.pt2").symlink_to(secret)
    (folder / "other").symlink_to(store.experiment_dir(2))  # a folder link into another experiment
    for rel in ("best/model.pt2", "best/other/best/model.pt2"):
        with pytest.raises(ArtifactPathError, match="leads outside"):
            store.open(1, rel)
        assert not store.exists(1, rel)


def test_a_symlink_that_stays_inside_is_fine(store):
    put(store, 1, "trials/3/compact/model.safetensors", b"weights")
    (store.experiment_dir(1) / "best").symlink_to(store.experiment_dir(1) / "trials" / "3" / "compact")
    with store.open(1, "best/model.safetensors") as fh:
        assert fh.read() == b"weights"


def test_relpath_refuses_files_of_other_experiments(store):
    path = put(store, 2, "best/model.pt2")
    with pytest.raises(ArtifactPathError, match="not inside experiment 1"):
        store.relpath(1, path)


def test_uploaded_models_resolve_under_models_only(store):
    (store.models_dir() / "ab.safetensors").write_bytes(b"w")
    assert store.resolve_model("models/ab.safetensors").read_bytes() == b"w"
    for bad in ("experiments/1/best/model.pt2", "models/../experiments/1/x", "/models/ab.safetensors"):
        with pytest.raises(ArtifactPathError):
            store.resolve_model(bad)


# -- deletion --------------------------------------------------------------------------------------------


def test_delete_experiment_removes_its_folder_and_nothing_else(store):
    put(store, 1, "best/model.pt2")
    put(store, 1, "trials/0/trial.log")
    kept = put(store, 2, "best/model.pt2")
    assert store.delete_experiment(1) is True
    assert not store.experiment_dir(1).exists() and kept.is_file()
    assert store.delete_experiment(1) is False  # nothing left


def test_delete_does_not_follow_a_symlinked_experiment_folder(store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    store.experiment_dir(5).parent.mkdir(parents=True, exist_ok=True)
    store.experiment_dir(5).symlink_to(outside)
    assert store.delete_experiment(5) is True
    assert not store.experiment_dir(5).is_symlink() and (outside / "precious.txt").read_text() == "keep me"


# -- best-model export ------------------------------------------------------------------------------------


def test_export_replaces_an_older_best_folder(tmp_path):
    import torch

    from search.speedup import SpeedupPlan, load_compact_model, save_compact_model

    compact = save_compact_model(tmp_path / "trial" / "compact", torch.nn.Linear(4, 2), SpeedupPlan(),
                                 factory="torch.nn:Linear", factory_kwargs={"in_features": 4, "out_features": 2},
                                 masks={})
    best = tmp_path / "best"
    best.mkdir()
    (best / "model.onnx").write_bytes(b"stale export of an earlier best")
    out = export_best(compact, best, torch.zeros(1, 4), formats=("pt2",), result={"task_id": 3})
    assert not (best / "model.onnx").exists() and "onnx" not in out.files
    assert sorted(p.name for p in best.iterdir()) == ["compact.json", "masks.safetensors", "model.pt2",
                                                      "model.safetensors", "result.json"]
    x = torch.randn(5, 4)
    assert torch.allclose(torch.export.load(str(out.files["pt2"])).module()(x), load_compact_model(best)(x))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".best")]  # no leftovers


def test_export_rejects_unknown_formats(tmp_path):
    with pytest.raises(ValueError, match="formats: unknown format 'tflite'"):
        export_best(tmp_path, tmp_path / "best", None, formats=("tflite",))
