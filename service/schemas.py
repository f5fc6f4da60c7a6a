"""Pydantic v2 schemas of the REST API, one per direction (``...Create`` in, ``...Public`` out).

Lists share one envelope: ``{"data": [...], "count": <total matching the filter>, "next_cursor":
<opaque string or null>}``; pass ``next_cursor`` back as ``?cursor=`` for the next page.

Example:
    >>> ExperimentCreate.model_validate({"spec": {"name": "x"}, "max_trials": 3}).max_trials
    3
    >>> Page[int](data=[1, 2], count=5, next_cursor="abc").model_dump()
    {'data': [1, 2], 'count': 5, 'next_cursor': 'abc'}
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from service.states import ExperimentState, TrialState

__all__ = [
    "ArtifactPublic",
    "BestPublic",
    "Catalog",
    "ErrorResponse",
    "ExperimentCreate",
    "ExperimentPublic",
    "ExperimentSort",
    "ExportFormat",
    "Health",
    "Page",
    "TransitionConflict",
    "TrialDetail",
    "TrialPublic",
    "TrialSort",
    "UploadedModelPublic",
]

T = TypeVar("T")

#: The largest id a path parameter accepts (a 32-bit signed int, the smallest PK type we run on).
MAX_ID = 2**31 - 1

EXAMPLE_SPEC: dict[str, Any] = {
    "name": "digits-cnn-agp",
    "model": {"factory": "search.zoo:digits_cnn", "kwargs": {}, "weights": None},
    "data": {"name": "digits"},
    "pruner": {"name": "l1", "config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]},
    "algorithm": {"name": "agp", "total_iteration": 5},
    "trial": {"finetune_epochs": 1, "batch_size": 64, "lr": 0.01, "speedup": True},
    "objective": {"metric": "accuracy", "best_result_mode": "maximize"},
    "constraints": {"max_flops_ratio": 0.5},
    "resources": {"max_concurrent_trials": 2, "gpus_per_trial": 0, "cpus_per_trial": 1},
}


class ExperimentSort(str, enum.Enum):
    """Sort keys of ``GET /experiments`` (``-`` = descending)."""

    CREATED_AT = "created_at"
    CREATED_AT_DESC = "-created_at"
    NAME = "name"
    NAME_DESC = "-name"
    BEST_SCORE = "best_score"
    BEST_SCORE_DESC = "-best_score"
    STATE = "state"
    STATE_DESC = "-state"


class TrialSort(str, enum.Enum):
    """Sort keys of ``GET /experiments/{id}/trials`` (``-`` = descending)."""

    NUMBER = "number"
    NUMBER_DESC = "-number"
    SCORE = "score"
    SCORE_DESC = "-score"
    FLOPS_RATIO = "flops_ratio"
    FLOPS_RATIO_DESC = "-flops_ratio"
    DURATION_S = "duration_s"
    DURATION_S_DESC = "-duration_s"


class ExportFormat(str, enum.Enum):
    """Downloadable exports of the best compact model."""

    PT2 = "pt2"
    ONNX = "onnx"
    SAFETENSORS = "safetensors"
    MASKS = "masks"


class ErrorResponse(BaseModel):
    """Every error body: ``{"detail": ...}`` (a string, or FastAPI's list of located errors for 422)."""

    detail: Any


class TransitionDetail(BaseModel):
    msg: str
    type: Literal["illegal_transition"] = "illegal_transition"
    from_: ExperimentState = Field(alias="from")
    to: ExperimentState

    model_config = ConfigDict(populate_by_name=True)


class TransitionConflict(BaseModel):
    """409 body for an illegal state change: ``{"detail": {"msg", "type", "from", "to"}}``."""

    detail: TransitionDetail


class Page(BaseModel, Generic[T]):
    """A page of a list endpoint: the items, the total matching the filter, and the next page's cursor."""

    data: list[T]
    count: int
    next_cursor: str | None = None


class ExperimentCreate(BaseModel):
    """Body of ``POST /experiments``: the experiment spec (see ``GET /catalog`` for the names it may use).

    ``max_trials`` (optional) caps the search's trials, overriding ``spec.algorithm.max_trials``.
    """

    spec: dict[str, Any] = Field(
        description="The experiment spec (DESIGN.md): name, model, data, pruner, algorithm, trial, objective, "
        "constraints, resources. Errors come back as 422 located at ['body', 'spec', <path>...].",
        examples=[EXAMPLE_SPEC],
    )
    max_trials: int | None = Field(default=None, ge=1, le=1_000_000)

    model_config = ConfigDict(extra="forbid")


class ExperimentPublic(BaseModel):
    """An experiment as the API shows it."""

    id: int
    name: str
    state: ExperimentState
    algorithm: str
    model: str
    spec: dict[str, Any]
    created_at: datetime
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    best_trial_number: int | None = None
    best_score: float | None = None
    best_flops_ratio: float | None = None
    n_trials: int = 0
    max_trials: int | None = None
    cancel_requested: bool = False

    model_config = ConfigDict(from_attributes=True)


class TrialPublic(BaseModel):
    """One trial (``number`` -1 is the pretrain trial)."""

    number: int
    parent_number: int | None = None
    attempt: int = 1
    state: TrialState
    params: dict[str, Any] | None = None
    config_list: list[dict[str, Any]] | None = None
    score: float | None = None
    metrics: dict[str, Any] | None = None
    requested_sparsity: dict[str, Any] | None = None
    achieved_sparsity: dict[str, Any] | None = None
    error: str | None = None
    worker: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None

    model_config = ConfigDict(from_attributes=True)


class TrialDetail(TrialPublic):
    """A trial with the tail of its log (``log_truncated``: only the last ``log_bytes`` bytes are here)."""

    log: str | None = None
    log_size: int = 0
    log_truncated: bool = False


class ArtifactPublic(BaseModel):
    """A downloadable export of the best model."""

    format: str
    size: int
    content_type: str
    sha256: str | None = None
    created_at: datetime | None = None
    url: str


class BestPublic(BaseModel):
    """The best trial so far and the exports of its compact model (empty until the experiment ends)."""

    experiment_id: int
    trial: TrialPublic
    exports: list[ArtifactPublic]


class UploadedModelPublic(BaseModel):
    """Uploaded weights; put ``weights`` into a spec's ``model.weights`` to start a search from them."""

    id: int
    name: str
    factory: str
    kwargs: dict[str, Any]
    size: int
    sha256: str
    created_at: datetime | None = None
    weights: str = Field(description="the reference to use as spec.model.weights")


class CatalogParam(BaseModel):
    name: str
    required: bool
    default: Any = None


class CatalogEntry(BaseModel):
    name: str
    description: str = ""
    params: list[CatalogParam] = Field(default_factory=list)
    factory: str | None = None
    aliases: list[str] = Field(default_factory=list)
    available: bool = True
    error: str | None = None


class Catalog(BaseModel):
    """What a spec may name: models, data sets, pruners, algorithms (with their parameters) and enums."""

    models: list[CatalogEntry]
    datasets: list[CatalogEntry]
    pruners: list[CatalogEntry]
    algorithms: list[CatalogEntry]
    objective_metrics: list[str]
    best_result_modes: list[str]
    optimizers: list[str]
    export_formats: list[str]


class Health(BaseModel):
    status: str
    database: str
    version: str
