"""The embedded-default demo, end to end on CPU in a few minutes.

1. a synthetic radar store (``metnet synth``);
2. a short fit of ``configs/synthetic.yaml`` on it;
3. test-split scores of the model (at p = 0.5 and with the calibration ``fit`` stores in
   ``best.ckpt``) next to Eulerian persistence's;
4. a figure of one forecast against the observation.

Run with ``make demo`` (or ``python pipelines/demo.py``); everything lands in
``outputs/`` (store and figures in ``outputs/demo/``, checkpoints in
``outputs/checkpoints/``, CSV logs in ``outputs/csv/``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from metnet.data import NowcastDataModule
from metnet.distribution import RainRateDistribution
from metnet.io.store import open_store, write_store
from metnet.io.synthetic import synthesize
from metnet.lightning_cli import MetNetCLI
from metnet.plotting import plot_forecast_panels, plot_frames
from metnet.training import NowcastModule

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml"


def make_store(store: Path, seed: int) -> None:
    if not store.exists():
        write_store(synthesize(frames=192, height=192, width=192, seed=seed, progress=True), store)


def train_and_test(store: Path, epochs: int) -> tuple[MetNetCLI, dict[str, float]]:
    cli = MetNetCLI(
        NowcastModule,
        NowcastDataModule,
        args=["--config", str(CONFIG), "--data.stores", f"[{store}]",
              "--trainer.max_epochs", str(epochs)],
        run=False,
        save_config_kwargs={"overwrite": True},
    )
    cli.trainer.fit(cli.model, cli.datamodule)
    results = cli.trainer.test(cli.model, cli.datamodule, ckpt_path="best", verbose=False,
                                weights_only=True)
    return cli, results[0]


def print_scores(scores: dict[str, float], leads: list[int]) -> None:
    """CSI at 1 mm/h (the model at p = 0.5 and calibrated on validation) and CRPS per lead,
    next to Eulerian persistence's."""
    print("\nTest split, model vs Eulerian persistence")
    print(f"{'lead':>6} | {'CSI 1 mm/h':^29} | {'CRPS (mm/h)':^19}")
    print(f"{'(min)':>6} | {'model':>9} {'calibr.':>9} {'persist.':>9} | "
          f"{'model':>9} {'persist.':>9}")
    for lead in leads:
        csi = [scores[f"test/{m}/csi_1/lead_{lead}"]
               for m in ("model", "model_calibrated", "persistence")]
        crps = [scores[f"test/{m}/crps/lead_{lead}"] for m in ("model", "persistence")]
        print(f"{lead:6d} | " + " ".join(f"{v:9.3f}" for v in csi) + " | "
              + " ".join(f"{v:9.3f}" for v in crps))


def draw_forecast(cli: MetNetCLI, path: Path) -> Path:
    """Forecast the wettest test sample and draw it next to observation and persistence."""
    model = cli.model.eval()
    batches = list(cli.datamodule.test_dataloader())
    batch = max(batches, key=lambda b: float(torch.nan_to_num(b["target"]).sum()))
    index = int(torch.nan_to_num(batch["target"]).sum((1, 2, 3)).argmax())
    sample = {key: value[index : index + 1] for key, value in batch.items()
              if isinstance(value, torch.Tensor)}
    with torch.no_grad():
        logits = model.logits(sample)  # with the per-lead inputs of a motion network
    dist = RainRateDistribution(logits[0], model.bin_edges, dim=1)
    observed = batch["target"][index]
    persistence = model.persistence(batch["context"][index : index + 1], observed[None])[0]
    leads = batch["lead_times"][index].tolist()
    keep = [i for i, lead in enumerate(leads) if lead in (15, 30, 60)] or [0, len(leads) - 1]
    return plot_forecast_panels(
        observed[keep].numpy(),
        dist.quantile(0.5)[keep].numpy(),
        dist.exceedance(1.0)[keep].numpy(),
        persistence[keep].numpy(),
        [leads[i] for i in keep],
        path,
        title="metnet on synthetic radar (test split)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/demo", help="folder for the store and figures")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic store")
    args = parser.parse_args()
    out = Path(args.out)
    store = out / "synthetic.zarr"
    make_store(store, args.seed)
    frames = plot_frames(open_store(store)["rain_rate"], out / "synthetic_frames.png",
                         indices=[0, 6, 12, 18])
    cli, scores = train_and_test(store, args.epochs)
    print_scores(scores, list(cli.datamodule.spec.lead_times))
    figure = draw_forecast(cli, out / "forecast.png")
    print(f"\nstore:    {store}\nframes:   {frames}\nforecast: {figure}")


if __name__ == "__main__":
    main()
