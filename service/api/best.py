"""``/experiments/{id}/best``: the best trial, and its compact model as a streamed download.

Downloads are looked up by experiment and an enumerated format only (no client-supplied paths), and
the stored relative path is resolved through :meth:`ArtifactStore.resolve`, which cannot leave the
experiment's folder.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from service import store
from service.api.deps import ArtifactsDep, CurrentToken, ExperimentDep, SessionDep, not_found
from service.artifacts import ArtifactPathError, content_type_for
from service.schemas import ArtifactPublic, BestPublic, ErrorResponse, ExportFormat, TrialPublic

__all__ = ["download_name", "router"]

router = APIRouter(prefix="/experiments/{experiment_id}/best", tags=["best"])

#: file name suffix of each format in Content-Disposition
_SUFFIX = {
    ExportFormat.PT2: "model.pt2",
    ExportFormat.ONNX: "model.onnx",
    ExportFormat.SAFETENSORS: "model.safetensors",
    ExportFormat.MASKS: "masks.safetensors",
}


def download_name(experiment_id: int, name: str, fmt: ExportFormat) -> str:
    """``<experiment name>-<id>-model.pt2`` with anything but ``[A-Za-z0-9._-]`` replaced.

    Example:
        >>> download_name(3, "digits cnn/agp", ExportFormat.PT2)
        'digits_cnn_agp-3-model.pt2'
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"
    return f"{safe[:80]}-{experiment_id}-{_SUFFIX[fmt]}"


def _exports(session: Any, experiment_id: int) -> list[ArtifactPublic]:
    rows = {a.kind: a for a in store.list_artifacts(session, experiment_id, trial_number=None)}
    out = []
    for fmt in ExportFormat:
        row = rows.get(fmt.value)
        if row is not None:
            out.append(ArtifactPublic(
                format=fmt.value, size=row.size, content_type=row.content_type, sha256=row.sha256,
                created_at=row.created_at, url=f"/api/v1/experiments/{experiment_id}/best/model?format={fmt.value}",
            ))
    return out


@router.get("", operation_id="getBestTrial", response_model=BestPublic,
            responses={404: {"model": ErrorResponse, "description": "no such experiment or no best trial yet"}})
def get_best(exp: ExperimentDep, session: SessionDep, _token: CurrentToken) -> Any:
    """The best trial so far and the downloadable exports of its compact model."""
    trial = store.best_trial(session, exp.id)
    if trial is None:
        raise not_found(f"experiment {exp.id} has no best trial yet")
    return BestPublic(experiment_id=exp.id, trial=TrialPublic.model_validate(trial, from_attributes=True),
                      exports=_exports(session, exp.id))


@router.get(
    "/model", operation_id="downloadBestModel", response_class=FileResponse,
    responses={
        200: {"description": "the file", "content": {"application/octet-stream": {}, "application/onnx": {}}},
        404: {"model": ErrorResponse, "description": "no such experiment, or not exported (yet)"},
    },
)
def download_best(
    exp: ExperimentDep,
    session: SessionDep,
    artifacts: ArtifactsDep,
    _token: CurrentToken,
    format: Annotated[ExportFormat, Query(description="pt2 | onnx | safetensors | masks")] = ExportFormat.PT2,
) -> FileResponse:
    """Stream the best compact model in one format (exported when the experiment ends)."""
    row = store.get_artifact(session, exp.id, trial_number=None, kind=format.value)
    if row is None:
        raise not_found(f"experiment {exp.id} has no {format.value} export (yet)")
    try:
        path = artifacts.resolve(exp.id, row.path)
    except ArtifactPathError:
        raise not_found(f"experiment {exp.id} has no {format.value} export") from None
    if not path.is_file():
        raise not_found(f"experiment {exp.id}: the {format.value} export is registered but its file is missing")
    media_type = row.content_type or content_type_for(path)
    return FileResponse(path, media_type=media_type, filename=download_name(exp.id, exp.name, format))
