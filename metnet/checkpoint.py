"""A trained model on disk: its network, the data settings it was trained with, its calibration.

A metnet checkpoint is a Lightning checkpoint with these entries added by
:func:`record` (``NowcastModule.on_save_checkpoint``):

* ``metnet_format``: the format version (:data:`FORMAT_VERSION`); a file without it is
  version 1; a file of a newer format is refused, naming both versions;
* ``metnet_net_class``: the network's class, one of :data:`NETWORKS` (never imported from
  the file: a checkpoint cannot make metnet run code);
* ``metnet_net_config``: the network's constructor arguments, plain values;
* ``metnet_calibration``: the post-hoc calibration, when fitted (:mod:`metnet.calibration`);
* ``metnet_pixel_size``: ``{"size": float, "unit": str}``, the pixel size of the stores the
  model was trained on (metres where metric; :func:`metnet.data.frames.pixel_size`), part of
  the data settings that stores are checked against (absent in files of earlier releases,
  which are not checked for it);

and Lightning's own ``state_dict``, ``hyper_parameters`` (the module's) and
``datamodule_hyper_parameters`` (the data settings). :class:`Checkpoint` reads the file once,
safely (``torch.load(weights_only=True)``), and is what every command uses: ``forecast``,
``evaluate``, ``calibrate``, the end-of-fit calibration and ``fit``/``test --ckpt_path``
(:meth:`Checkpoint.check_network`).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import xarray as xr
from torch import nn

from metnet.atomic import atomic_write
from metnet.calibration import Calibration
from metnet.data.frames import PIXEL_SIZE_RTOL, pixel_size
from metnet.data.inputs import channel_names
from metnet.models import MetNet

FORMAT_VERSION = 1
FORMAT_KEY = "metnet_format"
NET_CLASS_KEY = "metnet_net_class"
NET_CONFIG_KEY = "metnet_net_config"
CALIBRATION_KEY = "metnet_calibration"
PIXEL_KEY = "metnet_pixel_size"
DATA_KEY = "datamodule_hyper_parameters"
#: The network classes a checkpoint may name, by their import path.
NETWORKS: dict[str, type[nn.Module]] = {"metnet.models.MetNet": MetNet}
#: Network settings of earlier releases that the network no longer has, with the value that
#: meant "off": a checkpoint with that value loads; with another it is refused.
RETIRED = {"extrapolation_skip": (False, "the extrapolation skip, replaced by the "
                                         "extrapolation prior (prior: true)")}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the data or configuration."""


def class_name(net: nn.Module) -> str:
    """The import path of a network's class, as :data:`NETWORKS` keys it."""
    cls = type(net)
    module = "metnet.models" if cls.__module__.startswith("metnet.models") else cls.__module__
    return f"{module}.{cls.__qualname__}"


def record(contents: dict[str, Any], net: nn.Module,
           pixel: tuple[float, str] | None = None) -> None:
    """Add the format version, the network's class and its constructor arguments to a
    checkpoint being saved, and the training stores' pixel size (size, unit) when known."""
    contents[FORMAT_KEY] = FORMAT_VERSION
    contents[NET_CLASS_KEY] = class_name(net)
    contents[NET_CONFIG_KEY] = dict(net.config)
    if pixel is not None:
        contents[PIXEL_KEY] = {"size": float(pixel[0]), "unit": str(pixel[1])}


class Checkpoint:
    """One metnet checkpoint, read once.

    Args:
        contents: the checkpoint's dictionary (as ``torch.load`` gives it).
        path: the file it came from (named in every error).

    Raises:
        CheckpointError: not a metnet checkpoint, or one of a newer format.
    """

    def __init__(self, contents: Mapping[str, Any], path: str | Path = "checkpoint") -> None:
        self.path = Path(path)
        if not isinstance(contents, Mapping) or NET_CONFIG_KEY not in contents:
            raise CheckpointError(f"{self.path}: not a metnet checkpoint (no network "
                                  "configuration)")
        version = contents.get(FORMAT_KEY, 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(f"{self.path}: checkpoint format {version} is newer than "
                                  f"this metnet reads ({FORMAT_VERSION}); upgrade metnet")
        self.contents = dict(contents)

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        """Read a checkpoint file (``weights_only=True``: no code in it runs).

        Raises:
            CheckpointError: a missing, unreadable or foreign file.
        """
        path = Path(path)
        try:
            contents = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: no such checkpoint") from None
        except Exception as err:  # torch raises many types for a damaged or unsafe file
            raise CheckpointError(f"{path}: not a readable checkpoint "
                                  f"({_unreadable_reason(err)})") from err
        return cls(contents, path)

    @property
    def net_class(self) -> str:
        """The network's class (files of format 1 without it hold a MetNet)."""
        return str(self.contents.get(NET_CLASS_KEY, "metnet.models.MetNet"))

    @property
    def net_config(self) -> dict[str, Any]:
        """The network's constructor arguments (settings retired since, when off, dropped).

        Raises:
            CheckpointError: a retired setting that was on.
        """
        config = dict(self.contents[NET_CONFIG_KEY])
        for key, (off, what) in RETIRED.items():
            if config.pop(key, off) != off:
                raise CheckpointError(f"{self.path}: the model was trained with {what}, which "
                                      "this metnet no longer has; retrain it")
        return config

    @property
    def hparams(self) -> dict[str, Any]:
        """The training module's hyperparameters (thresholds, learning rate, ...)."""
        return dict(self.contents.get("hyper_parameters") or {})

    @property
    def data_settings(self) -> dict[str, Any]:
        """The data settings the model was trained with (empty if not recorded)."""
        return dict(self.contents.get(DATA_KEY) or {})

    @property
    def pixel_size(self) -> tuple[float, str] | None:
        """The pixel size (size, unit; metres where metric) of the stores the model was
        trained on, or None in a file that does not record it.

        Raises:
            CheckpointError: a damaged entry.
        """
        saved = self.contents.get(PIXEL_KEY)
        if saved is None:
            return None
        try:
            return float(saved["size"]), str(saved["unit"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{self.path}: damaged pixel size {saved!r}") from err

    @property
    def loss(self) -> str:
        """The loss the model was trained with (``cross_entropy`` before it was a choice)."""
        return str(self.hparams.get("loss", "cross_entropy"))

    @property
    def thresholds(self) -> tuple[float, ...]:
        """The rain-rate thresholds (mm/h) the model was scored at during training."""
        return tuple(self.hparams.get("thresholds", (0.1, 1.0, 4.0, 8.0)))

    @cached_property
    def net(self) -> nn.Module:
        """The network with the checkpoint's weights, in eval mode, on the CPU when first
        loaded (it is loaded once: moving it moves this network), carrying
        the data settings it was trained with as ``data_settings`` (from which
        :func:`metnet.forecast.forecast_dataset` builds its input when given no context).

        Raises:
            CheckpointError: an unknown network class, or weights that do not fit it.
        """
        cls = NETWORKS.get(self.net_class)
        if cls is None:
            raise CheckpointError(f"{self.path}: network class {self.net_class} is unknown to "
                                  f"this metnet (known: {', '.join(NETWORKS)})")
        try:
            net = cls(**self.net_config)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{self.path}: damaged network configuration ({err})") from err
        weights = {k.removeprefix("net."): v for k, v in self.contents["state_dict"].items()
                   if k.startswith("net.")}
        try:
            net.load_state_dict(weights)
        except RuntimeError as err:
            first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
            raise CheckpointError(f"{self.path}: weights do not fit the configuration "
                                  f"({first})") from err
        net.data_settings = self.data_settings
        return net.eval()

    @property
    def calibration(self) -> Calibration | None:
        """The stored calibration, or None.

        Raises:
            CheckpointError: a calibration entry that is not a valid one.
        """
        saved = self.contents.get(CALIBRATION_KEY)
        if saved is None:
            return None
        try:
            return Calibration.from_dict(saved)
        except (ValueError, TypeError, KeyError) as err:
            raise CheckpointError(f"{self.path}: damaged calibration ({err})") from err

    def save_calibration(self, calibration: Calibration) -> None:
        """Store ``calibration`` in the checkpoint file (replacing any earlier one),
        atomically: the file is written beside it and renamed into place."""
        self.contents[CALIBRATION_KEY] = calibration.to_dict()
        with atomic_write(self.path) as tmp:
            torch.save(self.contents, tmp)

    def check(self, data: Any) -> None:
        """Refuse data the model cannot take, in one line naming the difference.

        Args:
            data: an opened store (``xr.Dataset``, for ``forecast`` and ``evaluate``, which
                build the training samples' channels from it) or a configured datamodule
                (``calibrate``).

        Raises:
            CheckpointError: what differs.
        """
        if isinstance(data, xr.Dataset):
            problems = store_problems(self.net_config, self.data_settings, data,
                                      self.pixel_size)
            if problems:
                raise CheckpointError(f"{self.path}: {'; '.join(problems)}")
        elif problems := datamodule_problems(self.net_config, data):
            raise CheckpointError(f"{self.path}: the configured data do not fit the "
                                  f"checkpoint: {', '.join(problems)}")

    def check_network(self, net: nn.Module) -> None:
        """Refuse a configured network that differs from the checkpoint's (``fit`` and
        ``test`` with ``--ckpt_path``), naming every differing setting."""
        saved = {**_defaults(type(net)), **self.net_config}  # newer settings: their defaults
        differences = [f"{key}={saved.get(key)!r} (configured {value!r})"
                       for key, value in net.config.items()
                       if _plain(saved.get(key)) != _plain(value)]
        if self.net_class != class_name(net):
            differences.insert(0, f"class {self.net_class} (configured {class_name(net)})")
        if differences:
            raise CheckpointError("the checkpoint's network does not match the "
                                  "configuration: " + ", ".join(differences))


def _unreadable_reason(err: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in a few words. Torch's own message
    advises loading with code execution allowed; this never does."""
    text = str(err)
    if "Weights only load failed" in text:
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip().split("\n\n")[0].strip()
        if name := re.search(r"GLOBAL (\S+)", detail):
            return (f"it holds objects that would run code ({name[1]}) to load, and metnet "
                    "never runs code from a checkpoint")
        return f"not a torch checkpoint, or a damaged one: {detail}"
    if "zip archive" in text:
        return "damaged or truncated: its zip archive is incomplete"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"not a torch checkpoint: {type(err).__name__}" + (f": {first}" if first else "")


def store_problems(config: Mapping[str, Any], settings: Mapping[str, Any],
                   store: xr.Dataset, pixel: tuple[float, str] | None = None) -> list[str]:
    """Why a network (its ``config``, trained with data ``settings`` on stores of ``pixel``
    size and unit, if known) cannot forecast from ``store``; empty when it can."""
    step = int(store.attrs["step_minutes"])
    found = [_pixel_problem(store, pixel), spacing_problem(settings, step),
             channel_problem(config, settings_channel_names(settings)),
             lead_step_problem(config, step)]
    return [problem for problem in found if problem]


def context_step(settings: Mapping[str, Any], store_step: int) -> int:
    """Minutes between the context frames of a network trained with data ``settings``
    (``context_step_minutes``, else ``step_minutes``; without either, ``store_step``)."""
    return int(settings.get("context_step_minutes") or settings.get("step_minutes")
               or store_step)


def spacing_problem(settings: Mapping[str, Any], store_step: int) -> str | None:
    """Why a store stepping every ``store_step`` minutes cannot give the context frames of a
    network trained with data ``settings`` (its step must divide their spacing), or None."""
    spacing = context_step(settings, store_step)
    if spacing % store_step == 0:
        return None
    return (f"the model was trained on context frames {spacing} min apart; the store steps "
            f"every {store_step} min, which does not divide it (forecasts take every k-th "
            "store frame)")


def settings_channel_names(settings: Mapping[str, Any]) -> list[str]:
    """The context channels of the samples of data ``settings`` (empty: radar only)."""
    return channel_names(len(settings.get("satellite_stores") or []),
                         bool(settings.get("static_channels")),
                         bool(settings.get("time_channels")))


def channel_problem(config: Mapping[str, Any], names: list[str]) -> str | None:
    """Why a network (its ``config``) cannot take inputs of channels ``names``, or None."""
    expected = int(config.get("input_channels", len(names)))
    if expected == len(names):
        return None
    return (f"the model expects {expected} input channels per frame; its data settings give "
            f"{len(names)} ({', '.join(names)})")


def lead_step_problem(config: Mapping[str, Any], store_step: int) -> str | None:
    """Why a network (its ``config``) cannot forecast on a store's time grid, or None."""
    lead_step = int(config.get("lead_step_minutes", store_step))
    if lead_step % store_step == 0:
        return None
    return (f"the model's lead-time step ({lead_step} min) is not a multiple of the store's "
            f"{store_step}-minute step: it was trained on another time grid")


def _pixel_problem(store: xr.Dataset, pixel: tuple[float, str] | None) -> str | None:
    """Why the store's pixels differ from the training stores' ``pixel``, or None."""
    if pixel is None:
        return None
    size, unit = pixel_size(store["x"].values, str(store["x"].attrs.get("units", "m")))
    if unit == pixel[1] and math.isclose(size, pixel[0], rel_tol=PIXEL_SIZE_RTOL):
        return None
    return (f"the model was trained on {pixel[0]:g} {pixel[1]} pixels; the store's are "
            f"{size:g} {unit} (ingest the data at the model's pixel size, e.g. with "
            "--coarsen, or train on the store's)")


def datamodule_problems(config: Mapping[str, Any], datamodule: Any) -> list[str]:
    """Why a network (its ``config``) cannot take the samples of a configured
    :class:`~metnet.data.NowcastDataModule`; empty when it can."""
    spec = datamodule.spec
    wanted = {"input_channels": datamodule.num_channels,
              "lead_channels": datamodule.num_lead_channels,
              "context_frames": spec.context_frames, "input_size": spec.context_size,
              "target_size": spec.target_size}
    return [f"{name}={config.get(name, 0)} (data gives {value})"
            for name, value in wanted.items()
            if _plain(config.get(name, 0)) not in (value, [value, value])]


def _defaults(cls: type) -> dict[str, Any]:
    return {name: p.default for name, p in inspect.signature(cls).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _plain(value: Any) -> Any:
    """Tuples and lists compare equal (YAML gives lists, code gives tuples)."""
    return list(value) if isinstance(value, tuple | list) else value
