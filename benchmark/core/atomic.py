"""Atomic writes: files and folders appear complete or not at all, with normal permissions.

Every output goes to a temporary name beside its target and is renamed into place when complete;
an interrupted writer (exception, Ctrl-C) removes its temporary; a later process sweeps temporaries
of writers that were killed outright.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_mode(folder: bool = False) -> int:
    """The permissions a plain `open()`/`mkdir()` would give under the current umask."""
    return (0o777 if folder else 0o666) & ~_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temps(parent: str | Path) -> None:
    """Remove temporaries under `parent` left by writers that no longer run (killed with SIGKILL)."""
    parent = Path(parent)
    if not parent.is_dir():
        return
    for path in parent.glob(f"{TMP_PREFIX}*"):
        pid_text = path.name[len(TMP_PREFIX):].split("-", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_alive(int(pid_text)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder that becomes `target` on success.

    If another process completed `target` meanwhile, its copy is kept and ours discarded (both
    callers succeed). On any exception, Ctrl-C included, the temporary folder is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(target.parent)
    tmp = target.parent / f"{TMP_PREFIX}{os.getpid()}-{target.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    os.chmod(tmp, default_mode(folder=True))
    try:
        yield tmp
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent writer finished the same entry first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_folder(folder: str | Path) -> None:
    """Remove a folder by renaming it aside first, so no reader ever sees it half-deleted."""
    folder = Path(folder)
    if not folder.exists():
        return
    trash = folder.with_name(f"{TMP_PREFIX}{os.getpid()}-old-{folder.name}")
    shutil.rmtree(trash, ignore_errors=True)
    os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def save_tensors(tensors: dict[str, Any], path: str | Path) -> None:
    """Write a safetensors file with the permissions of every other file the benchmark writes.

    safetensors creates its files readable by the owner only (0600); cached checkpoints, attack cells
    and phase-1 images are shared like the rest of the cache.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path))
    except SafetensorError as exc:  # an I/O failure inside the library: the same one-line report as any write
        raise OSError(errno.EIO, f"safetensors could not write the file ({exc})", str(path)) from None
    os.chmod(path, default_mode())


def share_tree(folder: str | Path) -> None:
    """Give every file and folder under `folder` the default permissions (a library wrote some 0600)."""
    for path in Path(folder).rglob("*"):
        os.chmod(path, default_mode(folder=path.is_dir()))


def ensure_writable(folder: str | Path) -> Path:
    """Create `folder` if needed and prove a file can be written in it, before any work that would write there.

    Raises the OSError a later write would raise (not a folder, read-only, disk full), with the path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=TMP_PREFIX, dir=folder)
    try:
        os.write(fd, b"probe")
    finally:
        os.close(fd)
        os.unlink(probe)
    return folder

