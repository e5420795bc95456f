"""metnet: MetNet-style probabilistic precipitation nowcasting."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from metnet.atomic import atomic_write

__version__ = "0.1.0"


def _quiet_pysteps() -> None:
    """Keep pysteps from printing "Pysteps configuration file found ..." on standard output.

    pysteps prints that line when it is imported unless its configuration file says
    ``silent_import``. Where the user has no configuration of their own (``./pystepsrc``,
    ``$PYSTEPSRC``, ``~/.pysteps/pystepsrc``), ``$PYSTEPSRC`` is pointed at a copy of
    pysteps' own file with ``silent_import`` on, in metnet's cache folder; a user's file
    is left as it is.
    """
    home = Path.home() / ".pysteps" / "pystepsrc"
    spec = importlib.util.find_spec("pysteps")
    if "PYSTEPSRC" in os.environ or Path("pystepsrc").exists() or home.exists() or not spec:
        return
    packaged = Path(spec.origin).with_name("pystepsrc")
    quiet = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "metnet" / "pystepsrc"
    try:
        text = packaged.read_text().replace('"silent_import": false', '"silent_import": true')
        if not quiet.exists() or quiet.read_text() != text:
            with atomic_write(quiet) as tmp:
                tmp.write_text(text)
    except OSError:  # no writable cache: pysteps prints its line, nothing worse
        return
    os.environ["PYSTEPSRC"] = str(quiet)


_quiet_pysteps()
