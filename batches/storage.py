"""Where a batch's files live in storage, and the few operations on them that
every part shares: save (replacing), delete a folder, flush to disk.

Layout under ``batches/<id>/``: ``upload/original.<ext>`` (the upload),
``pages/`` (one image per page that is not read in place from the upload),
``work/`` (the manifest of extracted pages; removed at cleanup) and
``results.csv``.
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

if TYPE_CHECKING:
    from .models import Batch


def pages_prefix(batch: Batch) -> str:
    return f"{batch.storage_prefix}pages/"


def manifest_name(batch: Batch) -> str:
    return f"{batch.storage_prefix}work/manifest.json"


def delete_prefix(prefix: str) -> None:
    """Delete every stored file under ``prefix`` (a folder of the batch)."""
    try:
        dirs, files = default_storage.listdir(prefix)
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in files:
        default_storage.delete(prefix + name)
    for name in dirs:
        delete_prefix(f"{prefix}{name}/")
    try:  # the folder itself, now empty, where the storage has folders
        os.rmdir(default_storage.path(prefix))
    except (NotImplementedError, OSError):
        pass


def save(name: str, data: bytes) -> str:
    """Store ``data`` as ``name``, replacing any file of that name (deleted
    first: for files nothing reads until the stage that writes them is done)."""
    if default_storage.exists(name):
        default_storage.delete(name)
    return default_storage.save(name, ContentFile(data))


def work_folder(batch: Batch) -> str | None:
    """The batch's own work folder on local disk (``batches/<id>/work/``),
    created; None for a storage without local paths."""
    try:
        path = default_storage.path(f"{batch.storage_prefix}work")
    except NotImplementedError:
        return None
    os.makedirs(path, exist_ok=True)
    return path


def csv_name(batch: Batch) -> str:
    return f"{batch.storage_prefix}results.csv"


def replace(name: str, data: bytes) -> str:
    """Store ``data`` as ``name`` in one step: written and flushed under a
    temporary name, then renamed over the old file, so a reader or a crash
    sees the old file or the new one, never none or half of one. Storages
    without local paths fall back to ``save``."""
    try:
        final = default_storage.path(name)
    except NotImplementedError:
        return save(name, data)
    temporary = default_storage.save(f"{name}.{uuid.uuid4().hex}.partial", ContentFile(data))
    try:
        fsync_path(default_storage.path(temporary))
        os.replace(default_storage.path(temporary), final)
    except BaseException:
        default_storage.delete(temporary)
        raise
    fsync_path(os.path.dirname(final))
    return name


def make_durable(name: str) -> None:
    """Flush a stored file and its folder to disk before the upload is
    answered as accepted: a crash just after the answer must not lose it. (It
    also keeps the kernel from writing the upload back later, in the middle of
    reading its sheets.) Storages without local paths are left to themselves."""
    try:
        path = default_storage.path(name)
    except NotImplementedError:
        return
    fsync_path(path)
    fsync_path(os.path.dirname(path))


def fsync_path(path) -> None:
    """Flush a file, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
