"""Write-then-rename: every file or folder metnet writes appears whole or not at all.

A writer gets a hidden temporary path beside the destination, writes there, and the
finished result is moved to the destination in one rename (atomic on a POSIX file system).
If the writer fails, the temporary path is removed; if the process is killed, what is left
is a hidden sibling that readers never open.
"""

from __future__ import annotations

import os
import shutil
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
        staging: the temporary path to use (default: ``.STEM.<random>.tmp.SUFFIX`` beside
            ``path``, which keeps the suffix that writers choose a format by); a fixed one
            lets an interrupted writer resume its own work.
    """
    path = Path(path)
    tmp = Path(staging) if staging is not None else path.with_name(
        f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
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
