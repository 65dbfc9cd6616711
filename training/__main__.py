"""The ``python -m training`` command line: simulate data, train the VAE, refit its noise, export the decoder.

Commands are thin: they parse options and call the library. Heavy imports (torch)
happen inside the command that needs them, so ``simulate`` and ``--help`` stay light.
Bad input is one ``Error: ...`` line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from fastsim.errors import FastsimError

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Reference simulation, training and export for fastsim surrogates."""


#: The folder of the bundled experiment configs (installed with the package).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def bundled_config(config: str | None) -> str | None:
    """``--config``: a bundled config's name (``calo-electron``) becomes its file; paths pass unchanged."""
    if config is None or os.path.exists(config) or os.sep in config or config.endswith(".toml"):
        return config
    path = CONFIG_DIR / f"{config}.toml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.toml")))
        raise click.BadParameter(f"no file {config!r} and no bundled config of that name (bundled: {names})",
                                 param_hint="--config")
    return str(path)


@cli.command("simulate")
@click.option("-n", "--n-showers", "n", type=click.IntRange(min=1), required=True, help="Number of showers to simulate.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Output HDF5 file (CaloChallenge layout); its folder is created if missing; the binning XML (OUTPUT stem + .xml) and geometry file (stem + .geometry.json) are written beside it.")
@click.option("--particle", default="electron", show_default=True, help="electron (11), positron (-11) or photon (22): a name or a PDG id. Charged pions are not simulated.")
@click.option("--binning", "--dataset", "binning", default="2", show_default=True, help="CaloChallenge dataset name (1-photons, 1-pions, 2, 3) or a binning XML file with its geometry file NAME.geometry.json beside it.")
@click.option("--energy", default="1GeV:1TeV", show_default=True, help="Incident energies: fixed (50GeV), a list cycled over the showers (10GeV,100GeV) or a log-uniform range (1GeV:1TeV); bare numbers are MeV.")
@click.option("--theta", default="0", show_default=True, help="Polar angle to the layer normal, 0-80 deg: fixed (30deg) or uniform in a range (0deg:60deg); bare numbers are radians.")
@click.option("--phi", default="0", show_default=True, help="Azimuth in the readout's alpha convention: fixed (90deg) or uniform in a range (0:2pi); bare numbers are radians.")
@click.option("--substructure", is_flag=True, help="Deposit the lateral tail as soft-photon sub-showers (correlated per-shower fluctuations; docs/simulator.md).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Random seed; the same seed gives bitwise-identical showers in any chunking.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=1024, show_default=True, help="Showers simulated and written per chunk (memory use scales with it, not with -n).")
@click.option("--compression", type=click.Choice(["gzip", "lzf", "none"]), default="gzip", show_default=True, help="HDF5 compression of the showers dataset.")
@click.option("--method", type=click.Choice(["spots", "binned"]), default="spots", show_default=True, help="spots: every GFlash spot drawn (the reference; any particle, angle, geometry); binned: spot counts per voxel drawn directly, equal in distribution, for normal-incidence electrons on datasets 2 and 3 only.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def simulate_command(n, output, particle, binning, energy, theta, phi, substructure, seed, chunk_size, compression,
                     method, force, quiet) -> None:
    """Simulate electron, positron or photon showers with the GFlash-style reference simulator.

    \b
    Example:
      python -m training simulate -n 100000 --seed 1 -o data/electrons_train.h5
      python -m training simulate -n 1000 --energy 50GeV -o data/e50.h5
      python -m training simulate -n 10000 --particle photon --dataset 1-photons -o data/photons.h5
      python -m training simulate -n 10000 --theta 0deg:60deg --phi 0:2pi --substructure -o data/inclined.h5
      python -m training simulate -n 1000000 --method binned -o data/big.h5
    """
    import time

    from fastsim.geometry import load_detector
    from training.simulate import Setup, parse_angle, parse_energy, parse_particle, write_dataset

    # each argument checked before anything is written, errors naming the option
    checks = (("--particle", lambda: parse_particle(particle)), ("--energy", lambda: parse_energy(energy)),
              ("--theta", lambda: parse_angle("theta", theta)), ("--phi", lambda: parse_angle("phi", phi)),
              ("--binning", lambda: load_detector(binning)))
    parsed = {}
    for hint, check in checks:
        try:
            parsed[hint] = check()
        except FastsimError as exc:
            raise click.BadParameter(str(exc), param_hint=f"'{hint}'") from None
    geometry, material = parsed["--binning"]
    try:
        Setup.make(geometry, material, particle=parsed["--particle"], theta=parsed["--theta"], method=method)
    except FastsimError as exc:
        raise click.BadParameter(str(exc), param_hint="'--method'") from None
    t0 = time.perf_counter()
    h5_path, xml_path = write_dataset(
        output,
        n,
        parsed["--energy"],
        seed=seed,
        chunk_size=chunk_size,
        geometry=geometry,
        material=material,
        compression=None if compression == "none" else compression,
        overwrite=force,
        progress=not quiet and sys.stderr.isatty(),
        method=method,
        particle=parsed["--particle"],
        theta=parsed["--theta"],
        phi=parsed["--phi"],
        substructure=substructure,
    )
    if not quiet:
        seconds = time.perf_counter() - t0
        click.echo(f"wrote {n} showers to {h5_path} (binning: {xml_path}) in {seconds:.1f} s, {n / seconds:.0f} showers/s")


@cli.command("train")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="Experiment config: a TOML file ([data], [model], [train] tables) or the name of a bundled one (calo-electron); defaults for anything left out.")
@click.option("--data", type=click.Path(dir_okay=False), required=True, help="Training showers (CaloChallenge HDF5).")
@click.option("--validation", type=click.Path(dir_okay=False), default=None, help="Separate validation showers; without it a fraction of --data is held out.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run folder for checkpoints, loss curves and the resolved config.")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt (optimiser, epoch, history and RNG restored).")
@click.option("--epochs", type=int, default=None, help="Override [train] epochs.")
@click.option("--max-showers", type=int, default=None, help="Override [data] max_showers (0 = all).")
@click.option("--threads", type=int, default=None, help="Override [train] threads (torch CPU threads; 0 = torch default).")
@click.option("--seed", type=int, default=None, help="Override [train] seed.")
@click.option("--binning", "--dataset", "binning", default=None, help="The showers' binning: a CaloChallenge dataset name (1-photons, 1-pions, 2, 3) or a binning XML. Default: the XML beside --data (DATA stem + .xml, as simulate writes it), else dataset 2.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def train_command(config_path, data, validation, out, resume, epochs, max_showers, threads, seed, binning,
                  quiet) -> None:
    """Train the conditional VAE; early stopping on fastsim.validation's figure of merit.

    \b
    Example:
      python -m training train --config calo-electron \\
          --data data/train.h5 --validation data/val.h5 --out runs/calo-electron
      python -m training train --config calo-photon-d1 --data data/photons.h5 --out runs/photons
    """
    from training.train import load_config, train

    config_path = bundled_config(config_path)

    overrides = {key: value for key, value in (("train.epochs", epochs), ("data.max_showers", max_showers),
                                               ("train.threads", threads), ("train.seed", seed)) if value is not None}
    config = load_config(config_path, overrides)
    for name, path in (("--data", data), ("--validation", validation)):
        if path is not None and not os.path.isfile(path):
            raise click.BadParameter(f"file {path!r} does not exist", param_hint=name)
    geometry = _binning(binning, data)
    summary = train(config, data, out, validation=validation, resume=resume, geometry=geometry,
                    progress=not quiet and sys.stderr.isatty(), log=click.echo)
    click.echo(f"best figure of merit {summary['best_fom']:.5f} at epoch {summary['best_epoch'] + 1}; "
               f"{summary['epochs_run']} epochs in {summary['train_seconds'] / 60:.1f} min; run folder {out}")


def _binning(binning: str | None, data: str):
    """The geometry named by --binning, else the binning XML beside DATA, else dataset 2."""
    from pathlib import Path

    from fastsim.geometry import CylindricalGeometry, GeometryError, load_detector

    try:
        if binning is not None:
            if Path(binning).suffix == ".xml":
                return CylindricalGeometry.from_xml(binning)
            return load_detector(binning)[0]
        beside = Path(data).with_suffix(".xml")
        return CylindricalGeometry.from_xml(beside) if beside.is_file() else None
    except (GeometryError, OSError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="--binning") from None


@cli.command("symmetry")
@click.argument("data", type=click.Path(dir_okay=False, exists=True))
@click.option("--binning", "--dataset", "binning", default=None, help="The showers' binning (default: the XML beside DATA, else dataset 2).")
@click.option("-n", "--n-showers", "n", type=click.IntRange(min=10), default=20000, show_default=True, help="Showers to read.")
@click.option("--n-sigma", type=click.FloatRange(min=0.0), default=5.0, show_default=True, help="An order is recommended when a moment is this many standard errors from 0.")
@click.option("--json", "as_json", is_flag=True, help="Print the measurement as JSON.")
def symmetry_command(data, binning, n, n_sigma, as_json) -> None:
    """Measure the track-frame alpha harmonics of showers: which orders a "voxels" model needs.

    \b
    Example:
      python -m training symmetry data/inclined.h5
    """
    import json

    from fastsim.geometry import default_geometry
    from training.general import measure_alpha_symmetry

    geometry = _binning(binning, data) or default_geometry()
    result = measure_alpha_symmetry(data, geometry, max_showers=n, n_sigma=n_sigma)
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    click.echo(f"track-frame alpha moments of {result['n_showers']} showers of {data}:")
    click.echo("  (per order, the layer where each moment is most significant)")
    for row in result["orders"]:
        click.echo(f"  k={row['order']}: cos {row['cos_mean']:+.4f} +- {row['cos_error']:.4f} "
                   f"({row['cos_max_sigma']:.1f} sigma, layer {row['cos_layer']}), "
                   f"sin {row['sin_mean']:+.4f} +- {row['sin_error']:.4f} "
                   f"({row['sin_max_sigma']:.1f} sigma, layer {row['sin_layer']})"
                   f"{'  significant' if row['significant'] else ''}")
    orders = result["recommended"]
    click.echo(f"recommended [model] alpha_harmonics = {orders}" if orders else
               "no significant alpha structure: alpha_harmonics = [] (sectors of a ring share one mean)")


@cli.command("mix")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The mixed HDF5 file (its binning XML and geometry file are written beside it).")
@click.option("--block", type=click.IntRange(min=1), default=256, show_default=True, help="Rows taken from each input in turn.")
@click.option("--compression", type=click.Choice(["gzip", "lzf", "none"]), default="gzip", show_default=True, help="Compression of the showers dataset.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
def mix_command(inputs, output, block, compression, force) -> None:
    """Interleave shower files of several particles into one training file with a particle dataset.

    \b
    Example:
      python -m training simulate -n 20000 --particle electron -o data/e.h5
      python -m training simulate -n 20000 --particle photon -o data/gamma.h5
      python -m training mix data/e.h5 data/gamma.h5 -o data/mixed.h5
    """
    from training.mix import mix_datasets

    path = mix_datasets(inputs, output, block=block, compression=None if compression == "none" else compression,
                        overwrite=force)
    click.echo(f"wrote {path}")


@cli.command("fit-noise")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--validation", type=click.Path(dir_okay=False, exists=True), required=True, help="Validation showers (CaloChallenge HDF5) whose per-layer sparsity the noise must match.")
@click.option("--checkpoint", default="best.pt", show_default=True, help="Checkpoint file inside RUN (rewritten in place).")
@click.option("-n", "--n-showers", "n", type=click.IntRange(min=100), default=None, help="Validation showers to use (default: the run's [train] fom_showers).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Seed of the fit's draws (default: the run's [train] seed).")
def fit_noise_command(run, validation, checkpoint, n, seed) -> None:
    """Refit the voxel noise's per-layer spot energies of a trained RUN.

    Training does this after its last epoch; run it again after a change to
    the noise sampler, then export. The decoder's weights are untouched.

    \b
    Example:
      python -m training fit-noise runs/calo-electron --validation data/val.h5
    """
    from training.train import refit_voxel_noise

    refit_voxel_noise(run, validation, checkpoint=checkpoint, n_showers=n, seed=seed, log=click.echo)


@cli.command("export")
@click.argument("run", type=click.Path(exists=True))
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Output ONNX file (NAME.onnx).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True, help="fp32; fp16 (matrix products in float16, float32 inputs/outputs); int8 (via training.quantize).")
@click.option("--checkpoint", default="best.pt", show_default=True, help="Checkpoint file inside RUN.")
@click.option("--name", default=None, help="Model name in the spec (default: the output file's stem).")
@click.option("--version", "--model-version", "model_version", required=True, help="Model version written into the spec (MAJOR.MINOR.PATCH, e.g. 0.1.0): set it deliberately, there is no default.")
@click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False), default=None, help="metrics.json from `fastsim validate` to embed in the spec's metrics block.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists (without it, an existing file is an error).")
def export_command(run, output, precision, checkpoint, name, model_version, metrics_path, force) -> None:
    """Export RUN's decoder to ONNX with the fastsim spec, checked for parity.

    An existing OUTPUT is never replaced without --force, so a bundled model
    cannot be overwritten by accident; export to a new name instead.

    \b
    Example:
      python -m training export runs/calo-electron -o my-models/calo-electron-v2.onnx --version 0.1.0
      python -m training export runs/calo-electron -o /tmp/calo-fp16.onnx --version 0.1.0 --precision fp16
    """
    from training.export import export, metrics_summary

    metrics = metrics_summary(metrics_path) if metrics_path else None
    report = export(run, output, precision=precision, checkpoint=checkpoint, name=name, version=model_version,
                    metrics=metrics, overwrite=force, log=click.echo)
    click.echo(json.dumps(report["parity"]))


def main(argv: list[str] | None = None) -> int:
    """Run the command line; errors become one ``Error:`` line and exit status 2."""
    try:
        result = cli.main(args=argv, prog_name="python -m training", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Error: aborted", err=True)
        return 130
    except click.ClickException as exc:
        click.echo(f"Error: {exc.format_message()}", err=True)
        return 2
    except (FastsimError, ValueError) as exc:
        click.echo(f"Error: {exc}", err=True)
        return 2
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
