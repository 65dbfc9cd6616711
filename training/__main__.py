"""The ``python -m training`` command line: simulate data, train the VAE, export the decoder.

Commands are thin: they parse options and call the library. Heavy imports (torch)
happen inside the command that needs them, so ``simulate`` and ``--help`` stay light.
Bad input is one ``Error: ...`` line on stderr and exit status 2.
"""

from __future__ import annotations

import sys

import click

from fastsim.errors import FastsimError

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Reference simulation, training and export for fastsim surrogates."""


@cli.command("simulate")
@click.option("-n", "--n-showers", "n", type=click.IntRange(min=1), required=True, help="Number of showers to simulate.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Output HDF5 file (CaloChallenge layout); the binning XML is written beside it as OUTPUT stem + .xml.")
@click.option("--energy", default="1GeV:1TeV", show_default=True, help="Incident energies: fixed (50GeV), a list cycled over the showers (10GeV,100GeV) or a log-uniform range (1GeV:1TeV); bare numbers are MeV.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Random seed; the same seed gives bitwise-identical showers in any chunking.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=1024, show_default=True, help="Showers simulated and written per chunk (memory use scales with it, not with -n).")
@click.option("--compression", type=click.Choice(["gzip", "lzf", "none"]), default="gzip", show_default=True, help="HDF5 compression of the showers dataset.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def simulate_command(n, output, energy, seed, chunk_size, compression, force, quiet) -> None:
    """Simulate electron showers with the GFlash-style reference simulator.

    \b
    Example:
      python -m training simulate -n 100000 --seed 1 -o data/electrons_train.h5
      python -m training simulate -n 1000 --energy 50GeV -o data/e50.h5
    """
    import time

    from training.simulate import write_dataset

    t0 = time.perf_counter()
    h5_path, xml_path = write_dataset(
        output,
        n,
        energy,
        seed=seed,
        chunk_size=chunk_size,
        compression=None if compression == "none" else compression,
        overwrite=force,
        progress=not quiet and sys.stderr.isatty(),
    )
    if not quiet:
        seconds = time.perf_counter() - t0
        click.echo(f"wrote {n} showers to {h5_path} (binning: {xml_path}) in {seconds:.1f} s, {n / seconds:.0f} showers/s")


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
