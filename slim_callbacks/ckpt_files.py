"""A checkpoint's files (``PATH.pdparams``, ``PATH.pdopt``, ``PATH.slim``) replaced as one set.

Each file is renamed into place atomically, but three renames are not one: a process killed between
them would pair new weights with the previous ``.slim`` (and, after channel pruning, with the previous
architecture). So:

1. the new files are written completely in a temporary folder beside the checkpoint, and the ``.slim``
   records the size and CRC-32 of its companions (its *manifest*);
2. the current set is hard-linked into a hidden backup folder (``.PATH-name.prev``: no data is copied,
   and the links keep the old contents whatever is renamed over the names later);
3. the new files are renamed over the old names, the ``.slim`` last;
4. the backup is removed.

:func:`complete_prefix` tells a loader which set to read: the checkpoint itself when its files match
its manifest, else the backup (a kill during step 3), which is complete. Checkpoints without a
manifest (written by plain ``paddle.Model.save``) are taken as they are.
"""

from __future__ import annotations

import os
import shutil
import zlib
from typing import Callable, Mapping

import paddle

__all__ = ["MANIFEST_KEY", "file_digest", "manifest", "commit_set", "complete_prefix", "TornCheckpointError"]

MANIFEST_KEY = "files"
_STATE_SUFFIX = ".slim"


class TornCheckpointError(RuntimeError):
    """A checkpoint's files come from different saves and no complete backup exists."""


def file_digest(path: str) -> list[int]:
    """``[size in bytes, CRC-32]`` of a file."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return [os.path.getsize(path), crc]


def manifest(prefix: str, suffixes: tuple[str, ...] = (".pdparams", ".pdopt")) -> dict[str, list[int]]:
    """{suffix: digest} of the files ``prefix + suffix`` that exist."""
    return {s: file_digest(prefix + s) for s in suffixes if os.path.exists(prefix + s)}


def _backup_dir(path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.prev")


def commit_set(tmp_prefix: str, path: str, replace: Callable[[str, str], None] = os.replace) -> None:
    """Move the files ``tmp_prefix + suffix`` to ``path + suffix`` as one set (see the module docstring).

    ``replace`` is the rename used for the new files (tests inject a kill there).
    """
    folder = os.path.dirname(tmp_prefix)
    suffixes = sorted((n[len(os.path.basename(tmp_prefix)):] for n in os.listdir(folder)
                       if n.startswith(os.path.basename(tmp_prefix))), key=lambda s: (s == _STATE_SUFFIX, s))
    backup = _backup_dir(path)
    old = [s for s in (".pdparams", ".pdopt", _STATE_SUFFIX) if os.path.exists(path + s)]
    if old and _matches(path):
        staging = backup + ".tmp"
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        for s in old:
            os.link(path + s, os.path.join(staging, "ckpt" + s))
        shutil.rmtree(backup, ignore_errors=True)
        os.replace(staging, backup)
    # (a torn current set keeps the backup its interrupted save left: that is the last complete set)
    for s in suffixes:
        replace(tmp_prefix + s, path + s)
    shutil.rmtree(backup, ignore_errors=True)


def _matches(prefix: str) -> bool:
    state_file = prefix + _STATE_SUFFIX
    if not os.path.exists(prefix + ".pdparams"):
        return False
    if not os.path.exists(state_file):
        return True
    try:
        recorded: Mapping[str, list[int]] = paddle.load(state_file).get(MANIFEST_KEY) or {}
    except Exception:  # noqa: BLE001 - an unreadable .slim makes the set incomplete
        return False
    return all(os.path.exists(prefix + s) and file_digest(prefix + s) == list(d) for s, d in recorded.items())


def complete_prefix(path: str) -> str:
    """The prefix of a complete file set for checkpoint ``path``: ``path`` itself or its backup.

    Raises TornCheckpointError when ``path``'s files come from different saves and no backup is whole.
    """
    if _matches(path):
        return path
    backup = os.path.join(_backup_dir(path), "ckpt")
    if _matches(backup):
        return backup
    if not os.path.exists(path + ".pdparams"):
        raise FileNotFoundError(f"no checkpoint at {path!r}: expected {path + '.pdparams'}")
    raise TornCheckpointError(
        f"checkpoint {path!r} is torn: its files come from different saves (an interrupted save) and no "
        f"complete backup is left; load another checkpoint (e.g. an epoch_<n> beside it)")
