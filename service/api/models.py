"""``/models``: upload safetensors weights for a catalog architecture, list the uploads.

The body is ``multipart/form-data`` with fields ``file`` (the ``.safetensors`` file), ``name``,
``factory`` (a catalog model, ``search.zoo:<name>``) and ``kwargs`` (a JSON object of the factory's
arguments, default ``{}``). The request is counted while it streams in: past
``settings.max_upload_bytes`` (+ 64 KiB for the form fields) it is refused with 413 without reading
the rest (a ``Content-Length`` above the limit is refused before reading anything). The file is
checked as described in :mod:`service.api.weights` and never unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from service import store
from service.api.catalog import catalog_factory
from service.api.deps import ArtifactsDep, CurrentToken, SessionDep, SettingsDep
from service.api.specs import MAX_MODEL_PARAMS
from service.api.weights import WeightsError, check_against_architecture, read_header
from service.schemas import ErrorResponse, Page, UploadedModelPublic

__all__ = ["router"]

router = APIRouter(prefix="/models", tags=["models"])

FORM_SLACK = 64 * 1024
_CHUNK = 1 << 20

_UPLOAD_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "required": ["file", "name", "factory"],
        "properties": {
            "file": {"type": "string", "format": "binary", "description": "a .safetensors file"},
            "name": {"type": "string", "minLength": 1, "maxLength": 200},
            "factory": {"type": "string", "description": "a catalog model, e.g. search.zoo:digits_cnn"},
            "kwargs": {"type": "string", "description": "JSON object of factory arguments", "default": "{}"},
        },
    }}},
}


class _TooLarge(Exception):
    pass


def _limited(receive: Any, limit: int) -> Any:
    seen = 0

    async def wrapped() -> Any:
        nonlocal seen
        message = await receive()
        if message.get("type") == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge
        return message

    return wrapped


def _invalid(loc: list[Any], msg: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ["body", *loc], "msg": msg, "input": None}])


def _public(row: Any) -> UploadedModelPublic:
    return UploadedModelPublic(id=row.id, name=row.name, factory=row.factory, kwargs=row.kwargs or {}, size=row.size,
                               sha256=row.sha256, created_at=row.created_at, weights=row.path)


def _text_field(form: Any, key: str, *, required: bool, max_length: int) -> str | None:
    value = form.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise _invalid([key], "field required")
        return None
    if not isinstance(value, str):
        raise _invalid([key], "must be a text field, not a file")
    if len(value) > max_length or "\x00" in value:
        raise _invalid([key], f"must be at most {max_length} characters without NUL")
    return value.strip()


def _save(upload: UploadFile, folder: Any) -> tuple[Any, int, str]:
    """Copy the spooled upload to ``folder`` while hashing it; ``(path, size, sha256)`` (blocking: run in a thread)."""
    tmp = folder / f".upload-{uuid.uuid4().hex}.part"
    digest, size = hashlib.sha256(), 0
    upload.file.seek(0)
    with tmp.open("wb") as out:
        while chunk := upload.file.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return tmp, size, digest.hexdigest()


@router.post(
    "", operation_id="uploadModel", status_code=status.HTTP_201_CREATED, response_model=UploadedModelPublic,
    openapi_extra={"requestBody": _UPLOAD_BODY},
    responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
               413: {"model": ErrorResponse, "description": "larger than max_upload_bytes"}},
)
async def upload_model(request: Request, session: SessionDep, settings: SettingsDep, artifacts: ArtifactsDep,
                       _token: CurrentToken) -> Any:
    """Upload safetensors weights for a catalog model (checked against its state_dict, never unpickled)."""
    limit = settings.max_upload_bytes + FORM_SLACK
    too_large = HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                              detail=f"upload larger than {settings.max_upload_bytes} bytes (max_upload_bytes)")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_large
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise _invalid([], "the body must be multipart/form-data with fields file, name, factory, kwargs")
    limited = Request(request.scope, _limited(request.receive, limit))
    try:
        form = await limited.form(max_files=1, max_fields=8, max_part_size=FORM_SLACK)
    except _TooLarge:
        raise too_large from None
    try:
        return await run_in_threadpool(_store_upload, form, session, artifacts)
    finally:
        await form.close()


def _parse_fields(form: Any) -> tuple[UploadFile, str, str, dict[str, Any]]:
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise _invalid(["file"], "field required: the .safetensors file")
    name = _text_field(form, "name", required=True, max_length=200)
    factory = _text_field(form, "factory", required=True, max_length=200)
    zoo_name = catalog_factory(factory or "")
    if zoo_name is None:
        raise _invalid(["factory"], f"must be a catalog model ('search.zoo:<name>', see GET /api/v1/catalog), got {factory!r}")
    raw_kwargs = _text_field(form, "kwargs", required=False, max_length=FORM_SLACK) or "{}"
    try:
        kwargs = json.loads(raw_kwargs)
    except ValueError as exc:
        raise _invalid(["kwargs"], f"must be a JSON object: {exc}") from None
    if not isinstance(kwargs, dict):
        raise _invalid(["kwargs"], f"must be a JSON object, got {type(kwargs).__name__}")
    return upload, str(name), zoo_name, kwargs


def _store_upload(form: Any, session: Any, artifacts: Any) -> UploadedModelPublic:
    """Check the fields and the file, move it into ``models/``, add the row (blocking: run in a thread)."""
    upload, name, zoo_name, kwargs = _parse_fields(form)
    tmp, size, sha = _save(upload, artifacts.models_dir())
    try:
        _check(tmp, size, zoo_name, kwargs)
        relpath = f"models/{sha}.safetensors"
        os.replace(tmp, artifacts.root / relpath)  # content-addressed: the same bytes twice are one file
    finally:
        tmp.unlink(missing_ok=True)
    row = store.add_uploaded_model(session, name=name, factory=f"search.zoo:{zoo_name}", kwargs=kwargs,
                                   path=relpath, size=size, sha256=sha)
    session.commit()
    return _public(row)


def _check(path: Any, size: int, zoo_name: str, kwargs: dict[str, Any]) -> None:
    from search.zoo import model_entry  # noqa: PLC0415

    try:
        with path.open("rb") as fh:
            tensors = read_header(fh, size)
        n_params = check_against_architecture(tensors, model_entry(zoo_name).factory, kwargs)
    except WeightsError as exc:
        raise _invalid(["file", exc.tensor] if exc.tensor else ["file"], exc.message) from None
    except (TypeError, ValueError) as exc:
        raise _invalid(["kwargs"], f"search.zoo:{zoo_name} rejects them: {exc}") from None
    if n_params > MAX_MODEL_PARAMS:
        raise _invalid(["kwargs"], f"the model would have {n_params:,} parameters; at most {MAX_MODEL_PARAMS:,}")
    try:  # the reference reader must agree (it maps the header, reads no tensor data here)
        from safetensors import safe_open  # noqa: PLC0415

        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as exc:
        raise _invalid(["file"], f"not a readable safetensors file: {exc}") from None


@router.get("", operation_id="listModels", response_model=Page[UploadedModelPublic])
def list_models(session: SessionDep, _token: CurrentToken) -> Any:
    """Uploaded weights, oldest first."""
    rows = store.list_uploaded_models(session)
    return Page[UploadedModelPublic](data=[_public(r) for r in rows], count=len(rows), next_cursor=None)
