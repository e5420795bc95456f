"""Write-then-rename: every file or folder metnet writes appears whole or not at all.

A writer gets a hidden temporary path beside the destination, writes there, and the
finished result is moved to the destination in one rename (atomic on a POSIX file system).
If the writer fails, the temporary path is removed; if the process is killed, what is left
is a hidden sibling that readers never open, named after the writer's process and machine
(``.STEM.<pid>@<host>.<random>.tmp.SUFFIX``), which :func:`remove_leftovers` removes once
that process is gone.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path: str | Path, staging: str | Path | None = None) -> Iterator[Path]:
    """Yield a temporary path to write a file or folder to; move it to ``path`` at the end.

    A file replaces an existing ``path``; a folder may only replace a missing one (the move
    raises ``OSError`` otherwise). A block that writes nothing leaves ``path`` untouched (in
    distributed training, ranks other than 0 write nothing).

    Args:
        path: the destination.
        staging: the temporary path to use (default: ``.STEM.<pid>@<host>.<random>.tmp.SUFFIX``
            beside ``path``, which keeps the suffix that writers choose a format by); a fixed
            one lets an interrupted writer resume its own work.
    """
    path = Path(path)
    tmp = Path(staging) if staging is not None else path.with_name(
        f".{path.stem}.{os.getpid()}@{_host()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        if tmp.exists():
            os.replace(tmp, path)
    finally:
        remove(tmp)


def remove(path: Path) -> None:
    """Remove a file or folder if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_leftovers(path: str | Path) -> list[Path]:
    """Remove what killed writers of ``path`` left: the hidden temporary siblings of
    :func:`atomic_write` whose writing process, on this machine, no longer runs.

    Args:
        path: the destination; its name may be a glob (``DIR/*.nc``: every ``.nc`` file of
            ``DIR``). Leftovers of a writer on another machine are kept (it may still run).

    Returns:
        The paths removed.
    """
    path = Path(path)
    tag = re.compile(rf"\.(\d+)@([^.@]+)\.[0-9a-f]{{8}}\.tmp{re.escape(path.suffix)}$")
    removed = []
    for candidate in path.parent.glob(f".{path.stem}.*.tmp{path.suffix}"):
        found = tag.search(candidate.name)
        if found and found[2] == _host() and not _running(int(found[1])):
            remove(candidate)
            removed.append(candidate)
    return removed


def _host() -> str:
    """This machine's short name (no dots: it is one field of a temporary name)."""
    return socket.gethostname().split(".")[0].replace("@", "_") or "localhost"


def _running(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
