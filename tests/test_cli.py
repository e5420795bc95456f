"""The metnet command as a user meets it: help, synth, and one-line errors."""

import re
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from metnet.cli import COMMANDS, RENAMED, main, modernise
from metnet.io.store import open_store
from tests.conftest import run_metnet


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metnet.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_help_lists_the_commands():
    result = run("--help")
    assert result.returncode == 0
    for command in ("fit", "validate", "test", "calibrate", "synth", "ingest", "check",
                    "forecast", "evaluate"):
        assert command in result.stdout
    assert "predict" not in result.stdout


def test_predict_is_gone_and_says_what_replaces_it(tmp_path):
    result = run_metnet("predict", "--config", "configs/synthetic.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "metnet predict: error: `metnet predict` is gone (its output was thrown away): "
        "`metnet forecast` writes CF forecast files of a whole domain"]


def test_synth_writes_a_valid_deterministic_store(tmp_path):
    for name in ("a", "b"):
        result = run("synth", "--out", str(tmp_path / f"{name}.zarr"), "--frames", "6",
                     "--height", "64", "--width", "48", "--seed", "7")
        assert result.returncode == 0, result.stderr
    a, b = open_store(tmp_path / "a.zarr"), open_store(tmp_path / "b.zarr")
    assert a.rain_rate.shape == (6, 64, 48)
    np.testing.assert_array_equal(a.rain_rate.values, b.rain_rate.values)


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


# -- one grammar ---------------------------------------------------------------------------


def _help(capsys, *command: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_of_every_command_lists_every_option(command, capsys):
    text = _help(capsys, command)
    options = [a for action in COMMANDS[command][1]()._actions for a in action.option_strings
               if a.startswith("--") and not a.endswith("+")]
    assert {"--config", "--help"} <= set(options)
    for option in options:
        assert option in text, option
    assert not any(re.search(rf"{old}(?![\w-])", text) for old in RENAMED)  # today's only


def test_calibrate_help_shows_the_training_configuration_and_the_checkpoint(capsys):
    text = _help(capsys, "calibrate")
    for option in ("--config", "--ckpt_path", "--data.stores", "--model.net", "--trainer"):
        assert option in text, option


def test_old_spellings_are_translated_with_a_deprecation_note():
    argv, notes = modernise("forecast", ["--ckpt", "c.ckpt", "--data", "s.zarr", "--init-time",
                                         "2024-06-01T12:00", "2024-06-01T12:05",
                                         "--lead-times=15", "--thresholds", "1", "4",
                                         "--bin-probabilities", "--out", "f.nc"])
    assert argv == ["--ckpt_path", "c.ckpt", "--store", "s.zarr", "--init_time",
                    "[2024-06-01T12:00,2024-06-01T12:05]", "--lead_times=15",
                    "--thresholds", "[1,4]", "--bin_probabilities", "--out", "f.nc"]
    assert len(notes) == 7 and all("deprecated" in note for note in notes)
    # today's grammar passes unchanged; --data of a training command is the datamodule
    today = ["--ckpt_path", "c.ckpt", "--store", "s.zarr", "--lead_times", "[15,30]"]
    assert modernise("forecast", today) == (today, [])
    assert modernise("calibrate", ["--data", "d.yaml"]) == (["--data", "d.yaml"], [])


def test_old_spellings_still_forecast(tiny_store, tiny_checkpoint, tmp_path, capsys):
    old = tmp_path / "old.nc"
    assert main(["forecast", "--ckpt", str(tiny_checkpoint), "--data", str(tiny_store),
                 "--init-time", "2024-06-01T12:25", "--lead-times", "5", "15",
                 "--out", str(old)]) == 0
    assert "--ckpt is deprecated and will be removed: use --ckpt_path" in capsys.readouterr().err
    new = tmp_path / "new.nc"
    assert main(["forecast", "--ckpt_path", str(tiny_checkpoint), "--store", str(tiny_store),
                 "--init_time", "2024-06-01T12:25", "--lead_times", "[5,15]",
                 "--out", str(new)]) == 0
    with xr.open_dataset(old) as a, xr.open_dataset(new) as b:
        a.attrs.pop("history"), b.attrs.pop("history")  # each run stamps its time
        xr.testing.assert_identical(a, b)


def test_a_bad_option_value_is_one_line(tiny_store, tiny_checkpoint, tmp_path, capsys):
    assert main(["forecast", "--ckpt_path", str(tiny_checkpoint), "--store", str(tiny_store),
                 "--init_time", "2024-06-01T12:25", "--lead_times", "soon",
                 "--out", str(tmp_path / "f.nc")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lead_times" in err and "soon" in err
    assert err.startswith("metnet forecast: error: ")
    assert not (tmp_path / "f.nc").exists()
