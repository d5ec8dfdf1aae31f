"""The one atomic writer: every file llmlab writes (predictions, histories, figures, checkpoints,
adapters, submissions, tokenizer caches) goes through `write_atomic`.

Why: a reader (or a crash) must never see half a file, and an existing file must survive a failed
write. POSIX rename(2) replaces a directory entry in one step, so
    write everything to a temporary file in the SAME folder (rename cannot cross file systems)
    flush + fsync it (the bytes are on disk before the name points at them)
    os.replace(temporary, path)                      readers see the old file or the new one
    fsync the folder                                 the rename itself survives a power cut
and on any error the temporary file is removed and `path` is left as it was.
Folders (checkpoints, adapters, model folders, pico runs) use the same idea one level up:
`replace_folder_atomic` builds the new folder beside the old one, then swaps names, so a complete
folder is always there.

Tests: tests/test_atomic.py (old content survives an exception mid-write, no temporary file is
left, a folder given as a file path is one clear error, JSON of tensors and paths).
"""
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

import distributed

# ----------------------------------------------------------------------------
# files

# mkstemp / mkdtemp create 0600 / 0700 entries; outputs get the usual umask-based modes instead
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _check_target(path):
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; give a file path to write to (e.g. {path}/out.txt)")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    return path


def _remove_stale(path):
    """Temporary files or folders an earlier writer of `path` left when it was killed (SIGKILL
    runs no cleanup): `.<name>.*.tmp` beside it. One writer per path is the rule, so any left
    is stale."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _fsync_folder(folder):
    """Make a rename durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path, write):
    """Call write(f) on a binary temporary file beside `path`, fsync it, rename it over `path`.

    On any exception the temporary file is deleted and an existing `path` is untouched. Under
    torchrun only rank 0 writes (the other ranks hold the same results; see distributed.py).
    """
    if not distributed.is_main():
        return Path(path)
    path = _check_target(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def write_bytes_atomic(path, data):
    return write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path, text):
    """UTF-8 text, atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def _json_default(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (Path, torch.device, torch.dtype)):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def save_json_atomic(path, obj):
    """obj as indented JSON (tensors become lists; paths, devices, dtypes strings), atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


# ----------------------------------------------------------------------------
# folders

def replace_folder_atomic(path, fill):
    """Build a folder with fill(tmp_folder), then put it at `path` in place of the old one.

    The new folder is complete before it takes the name; the old one is renamed aside first and
    deleted only after the swap, so at every instant either the old or the new folder is at
    `path` or at `<path>.old` (load_folder_or_backup finds it after a crash).
    """
    path = Path(path)
    if not distributed.is_main():
        return path
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: is a file; give a folder path to write the folder to")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = path.with_name(path.name + ".old")
    try:
        tmp.chmod(0o777 & ~_UMASK)
        fill(tmp)
        _fsync_folder(tmp)
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_folder(path.parent)
    shutil.rmtree(old, ignore_errors=True)
    return path


def folder_or_backup(path):
    """`path` if it exists, else the `<path>.old` a crash inside replace_folder_atomic left."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    return path if path.exists() or not old.exists() else old
