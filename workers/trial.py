"""One trial as a pure function: ``run_trial(TrialSpec) -> TrialResult``.

A *prune* trial builds the origin model from its factory, loads the origin weights (or the parent
trial's finetuned masked weights and its masks, so what is masked stays masked), prunes with the
named pruner, finetunes the masked model, evaluates it on the data set's test split, speeds up a
copy and measures it against the origin model, and writes its artifacts:

``weights.safetensors``
    the finetuned weights with the masks multiplied in (what child trials start from; a refine step
    before the last saves them as they are, see :func:`search.scheduling.generator.hands_on`);
``masks.safetensors``
    the masks ``{module: {target: mask}}``;
``compact/``
    the compact model (``compact.json`` = factory + speedup plan, ``model.safetensors``), loaded
    with :func:`search.speedup.load_compact_model`;
``result.json`` and ``trial.log``.

A step of a search's refine phase (``task.params['refine']``, see
:class:`~search.scheduling.TaskGenerator`) cuts during its finetune instead of before it, its
segment of the refine phase's schedule (:func:`~search.scheduling.generator.refine_schedule`).

A *pretrain* trial (``task.params == {'pretrain': epochs}``) trains the origin model instead, so a
search whose spec gives no weights starts from a trained model.

The result depends only on the spec: the origin model is initialised from ``settings.seed`` (the
same in every trial), training is seeded per trial, and nothing is read but the spec's files.
Nothing is unpickled: weights are safetensors (a ``.pt`` origin file is read with
``torch.load(weights_only=True)``).

Example:
    >>> import tempfile
    >>> from search.scheduling import Task
    >>> from workers.spec import DataSpec, ModelSpec, TrialSettings, TrialSpec
    >>> spec = TrialSpec(
    ...     model=ModelSpec("search.zoo:digits_cnn"), data=DataSpec("digits"),
    ...     pruner_name="l1", pruner_kwargs={},
    ...     task=Task(0, [{"op_names": ["conv2"], "sparse_ratio": 0.5}]).to_json(),
    ...     artifact_dir=tempfile.mkdtemp(), settings=TrialSettings(finetune_epochs=0))
    >>> result = run_trial(spec)
    >>> result.ok, result.sparsity["conv2"], result.metrics["params_ratio"] < 1
    (True, 0.5, True)
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import math
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.metrics import measure_latency, model_cost
from search.pruning.gradual import GradualPruning, GradualSchedule
from search.pruning.io import load_masks, load_state_dict, save_masks, save_state_dict
from search.pruning.registry import get_pruner_class, make_pruner
from search.scheduling import TaskResult, achieved_sparsity
from search.scheduling.generator import hands_on, refine_schedule
from search.speedup import ModelSpeedup, SpeedupPlan, resolve_factory, save_compact_model
from search.zoo import get_dataset, get_dummy_input, list_models, model_entry, resolve_device, train_epochs
from workers.spec import ModelSpec, SpecError, TrialSettings, TrialSpec

__all__ = [
    "ProgressFn",
    "TrialResult",
    "build_model",
    "dummy_input_for",
    "load_weights",
    "run_trial",
    "trial_seed",
]

logger = logging.getLogger(__name__)

#: ``progress(event)``; event keys: ``task_id``, ``phase`` and, while training, ``epoch``,
#: ``epochs``, ``step``, ``steps_per_epoch``, ``loss``.
ProgressFn = Callable[[dict[str, Any]], None]

WEIGHTS_FILE = "weights.safetensors"
MASKS_FILE = "masks.safetensors"
COMPACT_DIR = "compact"
RESULT_FILE = "result.json"
LOG_FILE = "trial.log"


@dataclass
class TrialResult:
    """What a trial produced (plain JSON via :meth:`to_json`).

    Attributes:
        task_id: the task (``-1``: the pretrain trial).
        score: the objective metric (``None`` if the trial failed).
        metrics: accuracy, loss, flops, params, flops_ratio, params_ratio, compact_accuracy,
            latency_ms / latency_ratio (when measured), seconds...
        sparsity: achieved sparsity per module (share of masked weight elements).
        artifact_dir: where the artifacts are.
        error: the traceback, if the trial failed.
        started_at / finished_at: wall-clock times (``time.time()``) on the worker.
        attempts: how many times the executor started the trial (retries of dead workers).
        worker: ``host:pid`` of the process that ran it.
    """

    task_id: int
    score: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    sparsity: dict[str, float] = field(default_factory=dict)
    artifact_dir: str | None = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 1
    worker: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "score": self.score,
            "metrics": dict(self.metrics),
            "sparsity": dict(self.sparsity),
            "artifact_dir": self.artifact_dir,
            "error": self.error,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "attempts": self.attempts,
            "worker": self.worker,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrialResult:
        return cls(
            task_id=int(data["task_id"]),
            score=data.get("score"),
            metrics=dict(data.get("metrics") or {}),
            sparsity=dict(data.get("sparsity") or {}),
            artifact_dir=data.get("artifact_dir"),
            error=data.get("error"),
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            attempts=int(data.get("attempts", 1)),
            worker=data.get("worker"),
        )

    def to_task_result(self) -> TaskResult:
        """The :class:`~search.scheduling.TaskResult` a TaskGenerator is told."""
        return TaskResult(self.task_id, score=self.score, metrics=dict(self.metrics), sparsity=dict(self.sparsity),
                          artifact=self.artifact_dir, error=self.error)

    @classmethod
    def failed(cls, task_id: int, error: str, **kwargs: Any) -> TrialResult:
        return cls(task_id, error=error, **kwargs)


# -- model helpers (also used by spec validation and the search driver) --------------------------------


def _zoo_name(factory: str) -> str | None:
    """The zoo registry name a factory string refers to, if any."""
    if ":" not in factory:
        return factory if factory in list_models() else None
    fn = resolve_factory(factory)
    for name in list_models():
        if model_entry(name).factory is fn:
            return name
    return None


def build_model(model: ModelSpec, seed: int = 0) -> nn.Module:
    """The origin architecture, initialised from ``seed`` (the caller's RNG is left alone)."""
    factory = resolve_factory(model.factory)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(**model.kwargs)


def dummy_input_for(model: ModelSpec, batch_size: int = 1) -> Any:
    """An input for speedup and FLOPs: ``model.input_shape`` or the zoo model's dummy input."""
    if model.input_shape is not None:
        return torch.zeros(model.input_shape)
    name = _zoo_name(model.factory)
    if name is None:
        raise SpecError("model.input_shape", f"required: {model.factory!r} is not a zoo model, so the input shape is unknown")
    return get_dummy_input(name, batch_size=batch_size, **model.kwargs)


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a state dict strictly from safetensors (or a weights-only ``.pt``); never unpickles objects."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        state = load_state_dict(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    model.load_state_dict(state, strict=True)


def trial_seed(settings: TrialSettings, seed_index: int) -> int:
    """The training seed of one trial: different per trial, fixed by the spec and the task's ``seed_index``
    (its place in the search, the task id unless tasks were discarded; see ``Task.seed_index``)."""
    return (settings.seed * 1_000_003 + seed_index + 1) % (2**31)


# -- the trial ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _trial_context(spec: TrialSpec, log_path: Path) -> Iterator[None]:
    """Threads, RNG and a log file for the duration of one trial, all restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, spec.num_threads))
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger("search"), logging.getLogger("workers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        if lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(trial_seed(spec.settings, spec.seed_index))
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
        handler.close()
        torch.set_num_threads(threads)


def _emit(progress: ProgressFn | None, event: dict[str, Any]) -> None:
    if progress is None:
        return
    try:
        progress(event)
    except Exception:  # a broken progress sink must not fail the trial
        logger.debug("progress callback failed", exc_info=True)


def _train(model: nn.Module, data: Any, epochs: int, spec: TrialSpec, device: torch.device, phase: str,
           progress: ProgressFn | None) -> float:
    settings = spec.settings
    steps_per_epoch = max(1, math.ceil(len(data.train) / settings.batch_size))

    def on_step(step: int, loss: float) -> None:
        epoch = step // steps_per_epoch
        if step % steps_per_epoch == 0:
            logger.info("%s: epoch %d/%d", phase, epoch + 1, epochs)
        _emit(progress, {"task_id": spec.task_id, "phase": phase, "epoch": epoch, "epochs": epochs, "step": step,
                         "steps_per_epoch": steps_per_epoch, "loss": loss})

    loss = train_epochs(model, data, epochs=epochs, batch_size=settings.batch_size, lr=settings.lr,
                        optimizer=settings.optimizer, device=device, seed=trial_seed(settings, spec.seed_index),
                        on_step=on_step)
    logger.info("%s: last epoch mean loss %.4f", phase, loss)
    return loss


@torch.no_grad()
def _evaluate(model: nn.Module, data: Any, device: torch.device, batch_size: int = 256) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy) on the test split, in eval mode."""
    from torch.utils.data import DataLoader  # noqa: PLC0415

    was_training = model.training
    model.to(device).eval()
    correct, total, loss_sum = 0, 0, 0.0
    try:
        for inputs, targets in DataLoader(data.test, batch_size=batch_size, shuffle=False):
            inputs, targets = inputs.to(device), targets.to(device)
            logits = model(inputs)
            loss_sum += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
            correct += int((logits.argmax(dim=1) == targets).sum())
            total += len(targets)
    finally:
        model.train(was_training)
    return (correct / total, loss_sum / total) if total else (0.0, math.nan)


def _evaluator(model: nn.Module, data: Any, spec: TrialSpec, device: torch.device) -> Any:
    """A TorchEvaluator over the training split, for the data-dependent pruners."""
    from torch.utils.data import DataLoader  # noqa: PLC0415

    from search.pruning import TorchEvaluator  # noqa: PLC0415

    settings = spec.settings
    params = list(model.parameters())
    optimizer = (torch.optim.Adam(params, lr=settings.lr) if settings.optimizer == "adam"
                 else torch.optim.SGD(params, lr=settings.lr, momentum=0.9))
    generator = torch.Generator().manual_seed(trial_seed(settings, spec.seed_index))
    loader = DataLoader(data.train, batch_size=settings.batch_size, shuffle=True, generator=generator)

    def training_step(batch: Any, model: nn.Module) -> torch.Tensor:
        inputs, targets = batch
        return nn.functional.cross_entropy(model(inputs.to(device)), targets.to(device))

    def training_func(model: nn.Module, optimizers: Any, training_step: Any, lr_schedulers: Any,
                      max_steps: int | None, max_epochs: int | None) -> None:
        model.to(device).train()
        steps = 0
        for _ in range(max_epochs or 10_000):
            for batch in loader:
                optimizers.zero_grad(set_to_none=True)
                training_step(batch, model).backward()
                optimizers.step()
                steps += 1
                if max_steps is not None and steps >= max_steps:
                    return

    return TorchEvaluator(training_func, optimizer, training_step, dummy_input=dummy_input_for(spec.model))


def _prune(model: nn.Module, spec: TrialSpec, masks_in: dict[str, dict[str, torch.Tensor]], data: Any,
           device: torch.device, progress: ProgressFn | None,
           compress: bool = True) -> tuple[dict[str, dict[str, torch.Tensor]], Any]:
    name = spec.task.get("params", {}).get("pruner")  # a task may ask for another pruner (AutoCompress: admm)
    if name is None:
        name, kwargs = spec.pruner_name, dict(spec.pruner_kwargs)
    else:
        kwargs = dict(spec.task_pruners.get(name, {}))
    try:
        cls = get_pruner_class(name)
    except KeyError:
        # Algorithms register the pruners their tasks ask for ('admm') when imported; a worker may not have.
        import search.algorithms  # noqa: F401, PLC0415

        cls = get_pruner_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    if "dummy_input" in accepted and "dummy_input" not in kwargs:  # pruners that trace (group importance)
        kwargs["dummy_input"] = torch.utils._pytree.tree_map(
            lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, dummy_input_for(spec.model))
    if "evaluator" in accepted and "evaluator" not in kwargs:
        kwargs["evaluator"] = _evaluator(model, data, spec, device)
    _emit(progress, {"task_id": spec.task_id, "phase": "prune"})
    pruner = make_pruner(cls, model, spec.config_list, **kwargs)
    if masks_in:
        pruner.load_masks(masks_in)
    if spec.config_list and compress:
        pruner.compress()
    logger.info("pruned with %s: %d modules masked", name, len(pruner.get_masks()))
    return pruner.get_masks(), pruner


def _gradual_schedule(spec: TrialSpec, data: Any) -> GradualSchedule | None:
    """A refine step (``params['refine']``) prunes during its finetune: its segment of the refine phase's schedule.

    Not when the task prunes with a task pruner (ADMM), rewinds weights, has nothing to prune or nothing to train.
    """
    params = spec.task.get("params", {})
    epochs = spec.settings.finetune_epochs
    if ("refine" not in params or params.get("pruner") is not None or spec.reset_weight or not spec.config_list
            or epochs <= 0):
        return None
    steps = epochs * max(1, math.ceil(len(data.train) / spec.settings.batch_size))
    return refine_schedule(int(params["refine"]), int(params["steps"]), steps)


def _rewind(model: nn.Module, origin: nn.Module) -> None:
    """Copy the origin weights into ``model`` in place (wrappers and masks untouched)."""
    with torch.no_grad():
        own = dict(model.state_dict(keep_vars=True))
        for key, value in origin.state_dict().items():
            if key in own:
                own[key].copy_(value.to(own[key].device))


def _apply_masks(model: nn.Module, masks: dict[str, dict[str, torch.Tensor]]) -> None:
    with torch.no_grad():
        for name, targets in masks.items():
            module = model.get_submodule(name)
            for target, mask in targets.items():
                value = getattr(module, target, None)
                if not target.startswith("_") and isinstance(value, torch.Tensor):
                    value.mul_(mask.to(value.device, value.dtype))


def run_trial(spec: TrialSpec, progress: ProgressFn | None = None) -> TrialResult:
    """Run one trial (see the module docstring); raises on failure (executors turn that into an error result).

    Args:
        spec: the trial.
        progress: ``progress(event)`` during training (epoch, step, loss) and at each phase.

    Returns:
        The result; its artifacts are in ``spec.artifact_dir``.
    """
    started = time.time()
    artifact = Path(spec.artifact_dir)
    if artifact.exists():
        shutil.rmtree(artifact)  # a re-run (resume, retry) starts clean
    artifact.mkdir(parents=True)
    with _trial_context(spec, artifact / LOG_FILE):
        logger.info("trial %d (%s) starts: %s", spec.task_id, spec.kind, json.dumps(spec.task.get("params", {})))
        settings = spec.settings
        device = resolve_device(None if settings.device == "auto" else settings.device)
        data = get_dataset(spec.data.name, **spec.data.kwargs)
        origin = build_model(spec.model, settings.seed)
        if spec.model.weights is not None:
            load_weights(origin, spec.model.weights)
        dummy = dummy_input_for(spec.model)
        origin.eval()
        origin_cost = model_cost(origin, dummy)
        model = copy.deepcopy(origin)
        masks: dict[str, dict[str, torch.Tensor]] = {}
        handed_on: dict[str, torch.Tensor] | None = None
        if spec.parent_artifact is not None:
            parent = Path(spec.parent_artifact)
            load_weights(model, parent / WEIGHTS_FILE)
            masks = load_masks(parent / MASKS_FILE)
            logger.info("starts from %s (%d masked modules)", parent, len(masks))

        if spec.kind == "pretrain":
            epochs = int(spec.task["params"]["pretrain"])
            if epochs > 0:
                _train(model, data, epochs, spec, device, "pretrain", progress)
        else:
            schedule = _gradual_schedule(spec, data)
            masks, pruner = _prune(model, spec, masks, data, device, progress, compress=schedule is None)
            if spec.reset_weight and spec.parent_artifact is not None:
                # lottery ticket: the trained weights were ranked; rewind them to the origin weights
                # (the masks stay), then train the ticket
                _rewind(model, origin)
            gradual = GradualPruning(pruner, schedule) if schedule is not None else None
            if gradual is not None:
                cuts = gradual.schedule
                logger.info("refine step: pruning during the finetune, steps %d-%d of a schedule of %d steps (%d mask "
                            "updates, the full ratios after %d)", cuts.first, cuts.first + (cuts.span or cuts.steps),
                            cuts.steps, cuts.updates, math.floor(cuts.end * cuts.steps))
                gradual.start()
            try:
                if settings.finetune_epochs > 0:
                    _train(model, data, settings.finetune_epochs, spec, device, "finetune", progress)
            finally:
                if gradual is not None:
                    gradual.finish()
            masks = pruner.get_masks()
            pruner.unwrap_model()
            if hands_on(spec.task):  # the next refine step goes on from the weights as they are
                handed_on = {k: v.detach().clone() for k, v in model.state_dict().items()}
            _apply_masks(model, masks)
        masks = {m: {t: v.detach().cpu() for t, v in targets.items()} for m, targets in masks.items()}

        _emit(progress, {"task_id": spec.task_id, "phase": "evaluate"})
        accuracy, loss = _evaluate(model, data, device)
        model.cpu().eval()
        save_state_dict(handed_on if handed_on is not None else model.state_dict(), artifact / WEIGHTS_FILE)
        save_masks(masks, artifact / MASKS_FILE)

        _emit(progress, {"task_id": spec.task_id, "phase": "speedup"})
        compact, plan, speedup_ok = copy.deepcopy(model), SpeedupPlan(), 1.0
        if settings.speedup and masks:
            try:
                speedup = ModelSpeedup(compact, dummy, masks)
                speedup.speedup_model()
                plan = speedup.plan or SpeedupPlan()
            except Exception as exc:  # the masked model is still a correct (if larger) result
                logger.warning("speedup failed (%s: %s); the compact model is the masked model", type(exc).__name__, exc)
                compact, plan, speedup_ok = copy.deepcopy(model), SpeedupPlan(), 0.0
        compact.eval()
        save_compact_model(artifact / COMPACT_DIR, compact, plan, factory=spec.model.factory,
                           factory_kwargs=spec.model.kwargs, masks=masks,
                           extra={"task_id": spec.task_id, "accuracy": accuracy})
        cost = model_cost(compact, dummy)
        compact_accuracy, _ = _evaluate(compact, data, device)
        metrics: dict[str, float] = {
            "accuracy": accuracy,
            "loss": loss,
            "compact_accuracy": compact_accuracy,
            "flops": float(cost.flops),
            "params": float(cost.params),
            "flops_ratio": cost.flops / max(origin_cost.flops, 1),
            "params_ratio": cost.params / max(origin_cost.params, 1),
            "origin_flops": float(origin_cost.flops),
            "origin_params": float(origin_cost.params),
            "speedup_ok": speedup_ok,
        }
        if settings.measure_latency:
            origin_latency = measure_latency(origin.to(device), _to(dummy, device), device=device).median_ms
            latency = measure_latency(compact.to(device), _to(dummy, device), device=device).median_ms
            metrics.update(latency_ms=latency, origin_latency_ms=origin_latency,
                           latency_ratio=latency / origin_latency if origin_latency > 0 else 1.0)
        finished = time.time()
        metrics["seconds"] = finished - started
        score = metrics.get(spec.objective_metric)
        result = TrialResult(
            spec.task_id, score=score, metrics=metrics, sparsity=achieved_sparsity(masks),
            artifact_dir=str(artifact), started_at=started, finished_at=finished,
            worker=f"{socket.gethostname()}:{os.getpid()}",
        )
        logger.info("trial %d done in %.1fs: %s", spec.task_id, finished - started,
                    ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    (artifact / RESULT_FILE).write_text(json.dumps(result.to_json(), indent=1))
    _emit(progress, {"task_id": spec.task_id, "phase": "done"})
    return result


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, tuple | list):
        return type(x)(_to(v, device) for v in x)
    return x
