"""``prunesearch run`` end to end (in subprocesses), and run_search's crash/resume contract."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from workers.executors import LocalExecutor
from workers.local import STATE_FILE, SearchError, run_search
from workers.spec import ExperimentSpec, load_spec_file

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits-agp.yaml"


def cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def small_spec(tmp_path: Path, **changes) -> Path:
    """The example with a smaller budget (and ``changes`` merged per section)."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["trial"].update(pretrain_epochs=1, finetune_epochs=1)
    for section, values in changes.items():
        data[section].update(values)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# -- the command ------------------------------------------------------------------------------------------


def test_help_imports_neither_torch_nor_ray():
    code = ("import sys\nfrom workers.cli import main\n"
            "for argv in (['--help'], ['run', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0, e.code\n"
            "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("[]"), out.stdout
    assert "--resume" in out.stdout and "--ray-address" in out.stdout


def test_the_example_spec_is_valid():
    spec = load_spec_file(EXAMPLE)
    assert (spec.algorithm.name, spec.pruner.name, spec.model.factory) == ("agp", "l1", "search.zoo:digits_cnn")


def test_run_the_example_end_to_end(tmp_path):
    out = tmp_path / "run"
    proc = cli("run", str(EXAMPLE), "--out", str(out), "--max-trials", "2", "--no-onnx")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["trial", "accuracy", "FLOPs", "ratio", "params", "ratio", "sparsity", "seconds"]
    assert [line.split()[0] for line in lines[2:5]] == ["pretrain", "0", "1"]
    assert f"compact model: {out / 'best'}" in proc.stdout
    state = json.loads((out / STATE_FILE).read_text())
    assert [t["task_id"] for t in state["trials"]] == [0, 1] and all(t["error"] is None for t in state["trials"])
    best = json.loads((out / "best" / "result.json").read_text())

    import torch

    from search.speedup import load_compact_model, load_pt2
    from search.zoo import get_dummy_input

    compact = load_compact_model(out / "best").eval()
    x = get_dummy_input("digits_cnn", batch_size=1)  # the exported program has static shapes
    assert torch.allclose(load_pt2(out / "best" / "model.pt2").module()(x), compact(x), atol=1e-5)
    assert best["metrics"]["flops_ratio"] <= 0.5  # the spec's constraint


@pytest.mark.slow
@pytest.mark.ray
def test_run_on_a_local_ray(tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "run"
    proc = cli("run", str(small_spec(tmp_path)), "--out", str(out), "--executor", "ray", "--max-trials", "2", "--no-onnx")
    assert proc.returncode == 0, proc.stderr
    assert (out / "best" / "compact.json").is_file()


def test_relative_weights_resolve_against_the_spec_file(tmp_path):
    from search.pruning import save_state_dict
    from search.zoo import get_model

    (tmp_path / "models").mkdir()
    save_state_dict(get_model("digits_cnn").state_dict(), tmp_path / "models" / "origin.safetensors")
    data = yaml.safe_load(EXAMPLE.read_text())
    data["model"]["weights"] = "models/origin.safetensors"
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    spec = load_spec_file(tmp_path / "spec.yaml")
    assert spec.model.weights == str(tmp_path / "models" / "origin.safetensors")


def test_a_bad_spec_exits_2_naming_the_path(tmp_path):
    data = yaml.safe_load(EXAMPLE.read_text())
    data["pruner"]["config_list"][0]["sparse_raito"] = data["pruner"]["config_list"][0].pop("sparse_ratio")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = cli("run", str(path), "--out", str(tmp_path / "out"), timeout=120)
    assert proc.returncode == 2
    assert "pruner.config_list[0].sparse_raito: unknown key" in proc.stderr


def test_resume_after_the_process_was_killed_repeats_no_finished_trial(tmp_path):
    spec = small_spec(tmp_path, algorithm={"total_iteration": 5}, trial={"finetune_epochs": 2})
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "run", str(spec), "--out", str(out), "--no-onnx", "-q"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state_file = out / STATE_FILE
    deadline = time.monotonic() + 240
    finished: list[dict] = []
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if state_file.exists():
                finished = json.loads(state_file.read_text())["trials"]
                if len(finished) >= 2:
                    break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    before = json.loads(state_file.read_text())
    assert 2 <= len(before["trials"]) < 5, "the run was not killed midway"
    stamps = {t["task_id"]: t["finished_at"] for t in before["trials"]}
    pretrain_at = before["pretrain"]["finished_at"]

    done = cli("run", str(spec), "--out", str(out), "--resume", "--no-onnx")
    assert done.returncode == 0, done.stderr
    after = json.loads(state_file.read_text())
    assert [t["task_id"] for t in after["trials"]] == list(range(5))
    assert after["pretrain"]["finished_at"] == pretrain_at
    for task_id, finished_at in stamps.items():
        assert after["trials"][task_id]["finished_at"] == finished_at, f"trial {task_id} ran again"
        saved = json.loads((out / "trials" / str(task_id) / "result.json").read_text())
        assert saved["finished_at"] == finished_at
    assert (out / "best" / "compact.json").is_file()


def test_an_existing_run_is_not_overwritten_without_resume(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / STATE_FILE).write_text("{}")
    proc = cli("run", str(small_spec(tmp_path)), "--out", str(out), timeout=120)
    assert proc.returncode == 1 and "--resume" in proc.stderr


# -- run_search in-process: crash and resume ------------------------------------------------------------


class CrashAfter(LocalExecutor):
    """A LocalExecutor that 'crashes' (raises) once it has reported ``n`` results."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.left = n

    def poll(self, timeout=None):
        if self.left == 0:
            raise KeyboardInterrupt("simulated crash")
        done = super().poll(timeout)
        self.left -= len(done)
        return done


def _spec(**algorithm) -> ExperimentSpec:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["trial"].update(pretrain_epochs=1, finetune_epochs=1)
    data["algorithm"].update(algorithm)
    return ExperimentSpec.from_dict(data)


@pytest.mark.usefixtures("single_thread")
def test_a_resumed_search_ends_where_an_uninterrupted_one_does(tmp_path):
    spec = _spec(total_iteration=4)
    straight = run_search(spec, LocalExecutor(), tmp_path / "straight", export_onnx=False)
    with pytest.raises(KeyboardInterrupt):
        run_search(spec, CrashAfter(3), tmp_path / "crashed", export_onnx=False)  # pretrain + trials 0, 1
    with pytest.raises(SearchError, match="resume"):
        run_search(spec, LocalExecutor(), tmp_path / "crashed", export_onnx=False)
    resumed = run_search(spec, LocalExecutor(), tmp_path / "crashed", resume=True, export_onnx=False)
    assert [t.task_id for t in resumed.trials] == [0, 1, 2, 3]
    assert [t.metrics["accuracy"] for t in resumed.trials] == [t.metrics["accuracy"] for t in straight.trials]
    assert resumed.best.task_id == straight.best.task_id


def test_resume_refuses_a_changed_spec(tmp_path):
    run_search(_spec(total_iteration=1), LocalExecutor(), tmp_path, export_onnx=False)
    with pytest.raises(SearchError, match="spec changed"):
        run_search(_spec(total_iteration=2), LocalExecutor(), tmp_path, resume=True, export_onnx=False)


class Recording(LocalExecutor):
    """A LocalExecutor that keeps every TrialSpec it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.specs = []

    def submit(self, spec):
        self.specs.append(spec)
        return super().submit(spec)


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("reset_weight", [True, False])
def test_lottery_trials_rewind_only_when_the_spec_asks(tmp_path, reset_weight):
    spec = _spec(name="lottery_ticket", total_iteration=2, reset_weight=reset_weight)
    executor = Recording()
    run_search(spec, executor, tmp_path / "out", export_onnx=False)
    children = [s for s in executor.specs if s.task.get("parent_id") is not None]
    assert children, "the second lottery iteration starts from the first"
    assert [s.reset_weight for s in children] == [reset_weight] * len(children)
