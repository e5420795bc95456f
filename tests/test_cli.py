"""The metnet command as a user meets it: help, synth, and one-line errors."""

import subprocess
import sys

import numpy as np

from metnet.io.store import open_store


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metnet.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_help_lists_the_commands():
    result = run("--help")
    assert result.returncode == 0
    for command in ("fit", "validate", "test", "predict", "synth", "ingest", "forecast",
                    "evaluate"):
        assert command in result.stdout


def test_synth_writes_a_valid_deterministic_store(tmp_path):
    for name in ("a", "b"):
        result = run("synth", "--out", str(tmp_path / f"{name}.zarr"), "--frames", "6",
                     "--height", "64", "--width", "48", "--seed", "7")
        assert result.returncode == 0, result.stderr
    a, b = open_store(tmp_path / "a.zarr"), open_store(tmp_path / "b.zarr")
    assert a.precip_rate.shape == (6, 64, 48)
    np.testing.assert_array_equal(a.precip_rate.values, b.precip_rate.values)


def test_errors_are_one_line_without_traceback(tmp_path):
    (tmp_path / "s.zarr").mkdir()
    cases = [
        ("synth", "--out", str(tmp_path / "s.zarr")),
        ("ingest", str(tmp_path), "--source", "nexrad", "--out", str(tmp_path / "o.zarr")),
        ("ingest", str(tmp_path / "nowhere"), "--source", "fmi", "--out", str(tmp_path / "o.zarr")),
        ("ingest", str(tmp_path), "--source", "fmi", "--out", str(tmp_path / "o.zarr"),
         "--window", "rows=1"),
    ]
    for args in cases:
        result = run(*args)
        assert result.returncode == 1, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"metnet {args[0]}: error: "), lines
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "o.zarr").exists()
