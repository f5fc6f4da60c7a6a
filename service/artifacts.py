"""The artifact store: a directory tree, one folder per experiment, no way out of it.

Layout under ``root`` (the same paths on the shared volume every Ray node mounts)::

    experiments/<id>/trials/<number>/   one trial's files (weights, masks, compact/, result.json, trial.log)
    experiments/<id>/trials/pretrain/   the pretrain trial (task number -1)
    experiments/<id>/best/              the best compact model and its exports (model.pt2, model.onnx, ...)
    models/                             uploaded weights (safetensors)

Artifact rows in SQL hold paths *relative to the experiment's folder* (``best/model.pt2``,
``trials/3/trial.log``). Every lookup goes through :meth:`ArtifactStore.resolve`, which refuses
absolute paths, ``..`` and anything that resolves (through symlinks) outside the experiment's
folder, so a path stored in SQL or sent by a client can never reach another experiment's files or
the rest of the disk.

Content types (:func:`content_type_for`): ``.pt2`` is served as ``application/octet-stream``
(a ``torch.export`` archive has no registered media type; it is a zip file inside, but clients
must treat it as opaque and load it with ``torch.export.load``), ``.onnx`` as
``application/onnx``, ``.safetensors`` as ``application/octet-stream``, ``.json`` as
``application/json`` and logs as ``text/plain; charset=utf-8``.

Example:
    >>> import tempfile
    >>> store = ArtifactStore(tempfile.mkdtemp())
    >>> path = store.trial_dir(7, 0) / "trial.log"
    >>> path.parent.mkdir(parents=True)
    >>> _ = path.write_text("hello")
    >>> rel = store.relpath(7, path)
    >>> rel, store.size(7, rel), store.resolve(7, rel) == path
    ('trials/0/trial.log', 5, True)
    >>> store.resolve(7, "../8/best/model.pt2")
    Traceback (most recent call last):
    ...
    service.artifacts.ArtifactPathError: path: '..' is not allowed in an artifact path
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import BinaryIO

__all__ = ["ArtifactPathError", "ArtifactStore", "content_type_for", "CONTENT_TYPES"]

logger = logging.getLogger(__name__)

#: Media types by file suffix (see the module docstring for the choices).
CONTENT_TYPES = {
    ".pt2": "application/octet-stream",
    ".onnx": "application/onnx",
    ".safetensors": "application/octet-stream",
    ".json": "application/json",
    ".log": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}

PRETRAIN_NUMBER = -1
_CHUNK = 1 << 20


def content_type_for(path: str | os.PathLike[str]) -> str:
    """The media type an artifact is served with, from its suffix (``application/octet-stream`` if unknown).

    Example:
        >>> content_type_for("best/model.onnx"), content_type_for("best/model.pt2")
        ('application/onnx', 'application/octet-stream')
    """
    return CONTENT_TYPES.get(PurePosixPath(os.fspath(path)).suffix.lower(), "application/octet-stream")


class ArtifactPathError(ValueError):
    """A relative artifact path that is malformed or leaves its experiment's folder.

    ``field`` names what was wrong (``path``) so the API can answer 4xx naming it.
    """

    def __init__(self, message: str, field: str = "path") -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


def _check_id(experiment_id: int) -> int:
    if isinstance(experiment_id, bool) or not isinstance(experiment_id, int) or experiment_id < 0:
        raise ArtifactPathError(f"experiment id must be a non-negative int, got {experiment_id!r}", "experiment_id")
    return experiment_id


def _parts(relpath: str | os.PathLike[str]) -> tuple[str, ...]:
    """The components of a relative artifact path, refusing anything that could climb out."""
    text = os.fspath(relpath)
    if not isinstance(text, str):
        raise ArtifactPathError(f"must be a string, got {type(text).__name__}")
    if not text or "\x00" in text:
        raise ArtifactPathError("must be a non-empty path without NUL bytes")
    if "\\" in text:
        raise ArtifactPathError("use '/' as the separator ('\\' is not allowed)")
    posix = PurePosixPath(text)
    if posix.is_absolute() or text.startswith("~") or (len(text) > 1 and text[1] == ":"):
        raise ArtifactPathError(f"must be relative to the experiment's folder, got {text!r}")
    parts = tuple(p for p in posix.parts if p not in ("", "."))
    if ".." in parts:
        raise ArtifactPathError("'..' is not allowed in an artifact path")
    if not parts:
        raise ArtifactPathError(f"names no file: {text!r}")
    return parts


class ArtifactStore:
    """A directory store for experiment artifacts (see the module docstring).

    Args:
        root: the artifacts folder (created if missing).

    Example:
        >>> import tempfile
        >>> store = ArtifactStore(tempfile.mkdtemp())
        >>> store.best_dir(3).relative_to(store.root).as_posix()
        'experiments/3/best'
        >>> store.trial_dir(3, -1).name  # the pretrain trial
        'pretrain'
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    # -- layout ---------------------------------------------------------------------------------------
    def experiment_dir(self, experiment_id: int) -> Path:
        """``root/experiments/<id>`` (not created)."""
        return self.root / "experiments" / str(_check_id(experiment_id))

    def trial_dir(self, experiment_id: int, number: int) -> Path:
        """``experiments/<id>/trials/<number>`` (``trials/pretrain`` for number -1; not created)."""
        if isinstance(number, bool) or not isinstance(number, int) or number < PRETRAIN_NUMBER:
            raise ArtifactPathError(f"trial number must be an int >= -1, got {number!r}", "number")
        name = "pretrain" if number == PRETRAIN_NUMBER else str(number)
        return self.experiment_dir(experiment_id) / "trials" / name

    def best_dir(self, experiment_id: int) -> Path:
        """``experiments/<id>/best`` (not created)."""
        return self.experiment_dir(experiment_id) / "best"

    def models_dir(self) -> Path:
        """``root/models``, where uploaded weights live (created)."""
        path = self.root / "models"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- safe access ----------------------------------------------------------------------------------
    @staticmethod
    def _within(base: Path, relpath: str | os.PathLike[str]) -> Path:
        parts = _parts(relpath)
        base = base.resolve()
        target = base.joinpath(*parts).resolve()  # follows symlinks that exist
        if target != base and base not in target.parents:
            raise ArtifactPathError(f"{os.fspath(relpath)!r} leads outside its folder")
        return target

    def resolve(self, experiment_id: int, relpath: str | os.PathLike[str]) -> Path:
        """The absolute path of ``relpath`` inside the experiment's folder (it need not exist).

        Raises:
            ArtifactPathError: an absolute path, ``..``, a backslash, or a symlink that leads out.
        """
        return self._within(self.experiment_dir(experiment_id), relpath)

    def resolve_model(self, relpath: str | os.PathLike[str]) -> Path:
        """Like :meth:`resolve` for an uploaded model: ``relpath`` is relative to the root (``models/1.safetensors``)
        and must stay under ``models/``."""
        path = self._within(self.root, relpath)
        if self.models_dir().resolve() not in path.parents:
            raise ArtifactPathError(f"{os.fspath(relpath)!r} is not under models/")
        return path

    def relpath(self, experiment_id: int, path: str | os.PathLike[str]) -> str:
        """``path`` (absolute, inside the experiment's folder) as the relative POSIX path stored in SQL."""
        base = self.experiment_dir(experiment_id).resolve()
        target = Path(path).resolve()
        if base not in target.parents:
            raise ArtifactPathError(f"{os.fspath(path)!r} is not inside experiment {experiment_id}'s folder")
        return target.relative_to(base).as_posix()

    def exists(self, experiment_id: int, relpath: str | os.PathLike[str]) -> bool:
        """Whether ``relpath`` is a regular file of the experiment (``False`` for bad paths too)."""
        try:
            return self.resolve(experiment_id, relpath).is_file()
        except ArtifactPathError:
            return False

    def open(self, experiment_id: int, relpath: str | os.PathLike[str]) -> BinaryIO:
        """Open an artifact for reading (binary).

        Raises:
            ArtifactPathError: see :meth:`resolve`.
            FileNotFoundError: no such file (or it is not a regular file).
        """
        path = self.resolve(experiment_id, relpath)
        if not path.is_file():
            raise FileNotFoundError(f"no artifact {os.fspath(relpath)!r} in experiment {experiment_id}")
        return path.open("rb")

    def size(self, experiment_id: int, relpath: str | os.PathLike[str]) -> int:
        """Size in bytes (raises like :meth:`open`)."""
        path = self.resolve(experiment_id, relpath)
        if not path.is_file():
            raise FileNotFoundError(f"no artifact {os.fspath(relpath)!r} in experiment {experiment_id}")
        return path.stat().st_size

    def sha256(self, experiment_id: int, relpath: str | os.PathLike[str]) -> str:
        """Hex SHA-256 of an artifact's bytes (raises like :meth:`open`)."""
        digest = hashlib.sha256()
        with self.open(experiment_id, relpath) as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(chunk)
        return digest.hexdigest()

    # -- deletion -------------------------------------------------------------------------------------
    def delete_experiment(self, experiment_id: int) -> bool:
        """Remove the experiment's folder and everything in it; ``False`` if there was none.

        A symlink in its place is unlinked, never followed (rmtree would refuse it anyway).
        """
        path = self.experiment_dir(experiment_id)
        if path.is_symlink():
            path.unlink()
            return True
        if not path.exists():
            return False
        shutil.rmtree(path)
        logger.info("deleted artifacts of experiment %d", experiment_id)
        return True
