"""The ``fastsim`` command line: thin click commands that parse, call the library and report.

Every command turns bad input into one line on stderr and exit status 2 (see
:func:`main`); the work itself lives in the library modules.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from fastsim._version import __version__
from fastsim.errors import FastsimError
from fastsim.prior import MAX_SEED
from fastsim.session import MAX_THREADS

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["cli", "main"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


def _scalar_summary(block: dict[str, Any]) -> str:
    """``key=value`` for a block's plain entries (nested values as ``{...}``: see ``--json``)."""
    parts = []
    for key, value in block.items():
        if isinstance(value, dict) and set(value) >= {"value", "reference"}:
            value = value["value"]  # a metric with its reference-vs-reference baseline
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        elif isinstance(value, (int, str)) and len(str(value)) <= 60:
            parts.append(f"{key}={value}")
        else:
            parts.append(f"{key}={{...}}")
    return ", ".join(parts)


#: Short condition flags of `generate` and the spec condition each one sets.
CONDITION_FLAGS = {"--theta": "incident_theta", "--phi": "incident_phi", "--particle": "particle"}


def _named_conditions(spec: Any, energy: str | None, flagged: dict[str, str | None],
                      condition: tuple[str, ...]) -> tuple[dict[str, str], dict[str, str]]:
    """The condition options of `generate` by spec name: ({name: value}, {name: the flag that set it}).

    ``flagged`` maps the short flags of :data:`CONDITION_FLAGS` to their values (None: not given).
    A flag for a condition the model does not have, or two flags for one condition, is an error.
    """
    from fastsim.conditions import energy_condition

    given: list[tuple[str, str, str]] = []  # (flag, condition name, value)
    if energy is not None:
        given.append(("--energy", energy_condition(spec).name, energy))
    for flag, value in flagged.items():
        if value is not None:
            given.append((flag, CONDITION_FLAGS[flag], value))
    for item in condition:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise click.BadParameter(f"expected NAME=VALUE (e.g. incident_theta=30deg), got {item!r}",
                                     param_hint="'--condition'")
        given.append((f"--condition {name.strip()}", name.strip(), value.strip()))
    values: dict[str, str] = {}
    flags: dict[str, str] = {}
    for flag, name, value in given:
        if name not in spec.condition_names:
            raise click.BadParameter(f"the model has no condition {name!r}; its conditions are "
                                     f"{list(spec.condition_names)}", param_hint=f"'{flag}'")
        if name in flags:
            raise click.BadParameter(f"condition {name!r} is already set by {flags[name]}", param_hint=f"'{flag}'")
        values[name], flags[name] = value, flag
    return values, flags


def _flagged(exc: Exception, flags: dict[str, str]) -> str:
    """A condition error's message led by the option that gave the condition (``--theta: incident_theta: ...``)."""
    message = str(exc)
    for name, flag in flags.items():
        if message.startswith(f"{name}:"):
            return f"{flag}: {message}"
    # One condition option: it is the cause (e.g. a FILE with more values than -n).
    return f"{next(iter(flags.values()))}: {message}" if len(flags) == 1 else message


def _progress_bar(total: int, initial: int, quiet: bool) -> tqdm[Any]:
    """A tqdm bar with rate and ETA on stderr; off with --quiet or when stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="shower", unit_scale=True, dynamic_ncols=True,
                disable=quiet or not sys.stderr.isatty(), file=sys.stderr)


@click.group(name="fastsim", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="fastsim", message="%(prog)s %(version)s")
def cli() -> None:
    """Fast calorimeter shower simulation with an ONNX decoder.

    \b
    $ fastsim generate -n 100000 --energy 10GeV:1TeV -o showers.h5
    $ fastsim info calo-electron
    """


@cli.command()
@click.option("-n", "--n-showers", "n", type=click.IntRange(min=1), default=None,
              help="Number of showers to generate (default: one per value of a condition FILE).")
@click.option("--energy", default=None, metavar="VALUE|LO:HI|FILE",
              help="Incident energy: a constant (50GeV), a range sampled with the model's law (10GeV:1TeV), "
                   "or per-shower values from .npy/.csv/.h5 (MeV; HDF5: its incident_energies). Units MeV, GeV, "
                   "TeV; a bare number is MeV. Default: the model's training range.")
@click.option("--theta", default=None, metavar="VALUE|LO:HI|FILE",
              help="Incident polar angle (condition incident_theta): 30deg, 0deg:60deg, pi/6, or per-shower values "
                   "from .npy/.csv/.h5 (HDF5: its incident_theta). Units rad, deg, multiples of pi (pi/3, 0.5pi); "
                   "a bare number is in the model's unit. Default: the model's training range.")
@click.option("--phi", default=None, metavar="VALUE|LO:HI|FILE",
              help="Incident azimuth (condition incident_phi), as --theta; a periodic azimuth is wrapped into the "
                   "model's period, so -pi:pi and 0:2pi sample the same circle. Default: the training range.")
@click.option("--particle", default=None, metavar="NAME[,NAME...]|FILE",
              help="Incident particle (condition particle) of a model trained on several: a name or PDG id "
                   "(photon, 22), a comma list drawn with equal probability (electron,photon), or per-shower PDG "
                   "ids from .npy/.csv/.h5 (HDF5: its particle dataset). `fastsim info` lists the model's particles.")
@click.option("--condition", "condition", multiple=True, metavar="NAME=VALUE",
              help="Any condition by its spec name (see `fastsim info`), with units: "
                   "--condition incident_theta=30deg. Repeatable; values as for --energy.")
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Output file: .h5 (CaloChallenge layout), .npz, .npy, .root (ROOT TTree) or .hits.h5 "
                   "(sparse hit list); with --shards/--dask, a folder.")
@click.option("--model", default="default", show_default=True, metavar="NAME|PATH",
              help="Bundled model name (see `fastsim models`) or path to an .onnx file.")
@click.option("--spec", "spec_file", default=None, type=click.Path(dir_okay=False),
              help="Spec JSON for a model without embedded fastsim.spec metadata (default: MODEL.onnx.json).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0, max=MAX_SEED),
              help="Random seed; the same seed gives the same showers for any batch size or thread count.")
@click.option("--batch-size", default=None, type=click.IntRange(min=1),
              help="Showers per ONNX Runtime call (default: 2048).")
@click.option("--device", default="auto", show_default=True,
              type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]),
              help="Execution device; a missing GPU is an error, never a silent CPU fallback.")
@click.option("--threads", default=None, type=click.IntRange(min=1, max=MAX_THREADS),
              help="CPU threads decoding in parallel (default: one per physical core; "
                   "on a GPU: ONNX Runtime intra-op threads).")
@click.option("--format", "fmt", default=None, type=click.Choice(["h5", "npz", "npy", "root", "hits"]),
              help="Output format (default: from the output suffix).")
@click.option("--compression", default=None, metavar="none|gzip[:LEVEL]|lzf",
              help="Compression of the output datasets (HDF5: gzip or lzf; .npz: gzip).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run (same arguments) from its last chunk.")
@click.option("--allow-extrapolation", is_flag=True,
              help="Allow conditions outside the model's training range (with a warning).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary line.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON summary on stdout.")
@click.option("--shards", default=None, type=click.IntRange(min=1),
              help="Split the run into this many shard files in the folder -o, with a manifest; running the "
                   "same command again resumes (default with --dask: ~100k showers a shard).")
@click.option("--dask", "dask_address", default=None, metavar="ADDRESS|local:W",
              help="Generate the shards on a Dask cluster: a scheduler address (tcp://HOST:PORT) or local:W "
                   "for W local worker processes; each task uses --threads ONNX Runtime threads (default 1). "
                   "Needs the dask extra.")
@click.option("--dashboard", "dashboard_address", default=None, metavar="[HOST]:PORT",
              help="With --dask local:W, serve the Dask dashboard at this address (e.g. :8787); default: none.")
def generate(n: int | None, energy: str | None, theta: str | None, phi: str | None, particle: str | None,
             condition: tuple[str, ...], output: str, model: str, spec_file: str | None, seed: int,
             batch_size: int | None, device: str, threads: int | None, fmt: str | None, compression: str | None,
             force: bool, resume: bool, allow_extrapolation: bool, quiet: bool, as_json: bool, shards: int | None,
             dask_address: str | None, dashboard_address: str | None) -> None:
    """Generate showers into an HDF5 (CaloChallenge layout), .npz or .npy file.

    \b
    $ fastsim generate -n 100000 --energy 10GeV:1TeV -o showers.h5
    $ fastsim generate --energy energies.npy --model my.onnx -o out.h5 --json
    $ fastsim generate -n 10000000 --shards 100 --dask tcp://scheduler:8786 -o showers/
    $ fastsim generate -n 1000000 --dask local:4 --dashboard :8787 -o showers/
    $ fastsim generate -n 1000 --energy 50GeV -o showers.root
    $ fastsim generate --model inclined.onnx --energy 10GeV:1TeV --theta 0deg:60deg --phi 0:2pi -n 1000 -o inclined.h5
    $ fastsim generate --model inclined.onnx --energy ref.h5 --theta ref.h5 --phi ref.h5 -o again.h5
    $ fastsim generate --model inclined.onnx -n 1000 --condition incident_theta=pi/6 -o tilted.h5
    $ fastsim generate --model mixed.onnx -n 1000 --energy 10GeV:1TeV --particle photon -o photons.h5
    """
    import warnings

    import fastsim
    from fastsim.generator import DEFAULT_BATCH_SIZE
    from fastsim.io import check_output_path, find_partial, partial_progress

    if dashboard_address is not None and not (dask_address or "").startswith("local"):
        raise click.BadParameter("a dashboard is served by a local cluster: use it with --dask local:W "
                                 "(a remote scheduler has its own)", param_hint="'--dashboard'")
    flagged = {"--theta": theta, "--phi": phi, "--particle": particle}
    if shards is not None or dask_address is not None:
        from fastsim import distributed

        if fmt not in (None, "h5"):
            raise click.BadParameter(f"shards are HDF5 files, got {fmt!r}", param_hint="'--format'")
        conditions: Any = energy  # --energy alone: one value, for the model's energy condition
        flags: dict[str, str] = {}
        if any(value is not None for value in flagged.values()) or condition:
            # Flags name conditions: the spec says which the model has (the workers load it again).
            from fastsim.models import resolve_model
            from fastsim.spec import read_spec

            conditions, flags = _named_conditions(read_spec(resolve_model(model), spec_file), energy, flagged,
                                                  condition)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", fastsim.FastsimWarning)
            try:
                summary = distributed.generate(
                    model, n, output, conditions, seed=seed, shards=shards, client=dask_address, spec=spec_file,
                    device=device, threads=threads, batch_size=batch_size, compression=compression,
                    allow_extrapolation=allow_extrapolation, force=force, dashboard=dashboard_address,
                    progress=not (quiet or as_json) and sys.stderr.isatty())
            except fastsim.ConditionError as exc:
                raise fastsim.ConditionError(_flagged(exc, flags)) from None
        for warning in caught:
            click.echo(f"fastsim: warning: {warning.message}", err=True)
        if as_json:
            _echo_json(summary)
        elif not quiet:
            click.echo(f"wrote {summary['n']} showers in {summary['shards']} shards to {summary['out']} "
                       f"({len(summary['generated'])} generated, {len(summary['skipped'])} already done) in "
                       f"{summary['seconds']:.2f} s ({summary['showers_per_s']:.0f} showers/s, "
                       + (f"{summary['workers']} Dask workers)" if dask_address else "in this process)"), err=True)
        return

    from fastsim.formats import check_hep_output, hep_format, write_hep

    # Cheap checks first: a bad output path fails before the model is loaded.
    hep = hep_format(output, fmt)  # ROOT or hit-list output (fastsim.formats)
    if hep is not None:
        check_hep_output(output, hep, force=force, resume=resume, compression=compression)
    else:
        check_output_path(output, force=force, resume=resume, fmt=fmt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", fastsim.FastsimWarning)
        # Inside the block: a device 'auto' that had to use the CPU is reported on one line.
        generator = fastsim.load(model, spec=spec_file, device=device, threads=threads)
        named, flags = _named_conditions(generator.spec, energy, flagged, condition)
        try:
            plan = generator.plan(n, named or None, allow_extrapolation=allow_extrapolation)
        except fastsim.ConditionError as exc:
            raise fastsim.ConditionError(_flagged(exc, flags)) from None
        except fastsim.ArgumentError:
            raise click.UsageError("-n/--n-showers is required unless --energy FILE (or another condition FILE: "
                                   "--theta, --phi, --particle, --condition NAME=FILE) gives one value per shower") \
                from None
    for warning in caught:
        click.echo(f"fastsim: warning: {warning.message}", err=True)
    bar = _progress_bar(plan.n, partial_progress(output) if resume else 0, quiet or as_json)
    try:
        if hep is not None:
            summary = write_hep(generator, output, conditions=plan, fmt=hep, seed=seed,
                                batch_size=batch_size or DEFAULT_BATCH_SIZE, force=force, on_batch=bar.update)
        else:
            summary = generator.write(output, conditions=plan, seed=seed, batch_size=batch_size or DEFAULT_BATCH_SIZE,
                                      fmt=fmt, compression=compression, resume=resume, force=force,
                                      on_batch=bar.update)
    except KeyboardInterrupt:
        if find_partial(output) is not None:
            click.echo("fastsim: interrupted; run the same command with --resume to continue", err=True)
        else:
            click.echo("fastsim: interrupted before any showers were written; nothing to resume", err=True)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        bar.close()
    if as_json:
        _echo_json(summary)
    elif not quiet:
        resumed = f" (resumed after {summary['resumed_from']})" if summary["resumed_from"] else ""
        click.echo(f"wrote {summary['n']} showers to {summary['output']}{resumed} in {summary['seconds']:.2f} s "
                   f"({summary['showers_per_s']:.0f} showers/s, {summary['provider']})", err=True)


@cli.command()
@click.argument("model", default="default", metavar="[MODEL]")
@click.option("--spec", "spec_file", default=None, type=click.Path(dir_okay=False),
              help="Spec JSON for a model without embedded fastsim.spec metadata.")
@click.option("--json", "as_json", is_flag=True, help="Print the information as JSON.")
def info(model: str, spec_file: str | None, as_json: bool) -> None:
    """Show a model's spec, graph inputs/outputs and the available execution providers.

    \b
    $ fastsim info calo-electron
    $ fastsim info path/to/model.onnx --json
    """
    import fastsim
    from fastsim.session import available_providers

    generator = fastsim.load(model, spec=spec_file, device="cpu", threads=1)
    tensors = {
        "inputs": [{"name": a.name, "shape": a.shape, "type": a.type} for a in generator.session.get_inputs()],
        "outputs": [{"name": a.name, "shape": a.shape, "type": a.type} for a in generator.session.get_outputs()],
    }
    doc: dict[str, Any] = {"path": str(generator.path), "sha256": generator.sha256, "spec": generator.spec.to_dict(),
           **tensors, "providers": available_providers()}
    if as_json:
        _echo_json(doc)
        return
    spec = generator.spec
    click.echo(f"{spec.name} {spec.version}  ({doc['path']})")
    click.echo(f"  format      {spec.format}, sha256 {doc['sha256'][:16]}...")
    click.echo(f"  latent      {spec.latent_dim} ({spec.prior.get('kind')})")
    for cond in spec.conditions:
        if cond.categories is not None:
            click.echo(f"  condition   {cond.name} {{{cond.category_list()}}} {cond.unit}, categorical")
            continue
        period = f", periodic (period {cond.period:g} {cond.unit})" if cond.period is not None else ""
        click.echo(f"  condition   {cond.name} [{cond.min:g}, {cond.max:g}] {cond.unit}, {cond.sampling}{period}")
    geometry = spec.output.geometry
    layers = geometry.get("layers", [])
    geo = f", {geometry.get('kind', '?')} geometry, {len(layers)} layers" if geometry else ""
    click.echo(f"  output      {spec.output.name}: {spec.n_voxels} voxels in {spec.output.unit} "
               f"({spec.output.dtype}){geo}")
    for kind in ("inputs", "outputs"):
        for arg in doc[kind]:
            click.echo(f"  {kind[:-1]:<11} {arg['name']} {arg['shape']} {arg['type']}")
    # The training and metrics blocks can be large: scalars here, everything with --json.
    for label, block in (("training", spec.training), ("metrics", spec.metrics)):
        if block:
            click.echo(f"  {label:<11} {_scalar_summary(block)}")
    click.echo(f"  producer    {spec.producer or '?'}")
    click.echo(f"providers available: {', '.join(doc['providers'])}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def models(as_json: bool) -> None:
    """List the bundled models (and those in FASTSIM_MODEL_PATH).

    \b
    $ fastsim models
    """
    from fastsim.models import DEFAULT_MODEL, bundled_models
    from fastsim.spec import read_spec

    rows = []
    for model in bundled_models():
        try:
            spec = read_spec(model.path)
            version, summary = spec.version, f"{spec.n_voxels} voxels, latent {spec.latent_dim}"
        except FastsimError as exc:
            version, summary = "?", f"unreadable: {exc}"
        rows.append({"name": model.name, "version": version, "default": model.name == DEFAULT_MODEL,
                     "path": str(model.path), "card": str(model.card) if model.card else None,
                     "summary": summary})
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo("no bundled models installed (set FASTSIM_MODEL_PATH or pass --model PATH)")
    for row in rows:
        mark = " (default)" if row["default"] else ""
        click.echo(f"{row['name']}{mark}  {row['version']}  {row['summary']}  {row['path']}")


@cli.command()
@click.argument("generated", metavar="GENERATED.h5")
@click.argument("reference", metavar="REFERENCE.h5")
@click.option("-o", "--output-dir", default="validation", show_default=True, type=click.Path(file_okay=False),
              help="Report folder: metrics.json, report.md and PNG plots.")
@click.option("--geometry", "geometry_xml", default=None, metavar="XML|DATASET",
              help="CaloChallenge binning XML, or a dataset name (1-photons, 1-pions, 2, 3) for the binning "
                   "fastsim ships (default: the files' own, else dataset 2).")
@click.option("-n", "--n-showers", "n_max", default=None, type=click.IntRange(min=1),
              help="Read at most this many showers from each file (default: all).")
@click.option("--metrics", "groups", default="all", show_default=True, metavar="GROUP[,GROUP...]",
              help="Metric groups: all, or some of separation, wasserstein, energy-bins, theta-bins, "
                   "particle-bins, inclined-shape, fpd, kpd, classifier, classifier-voxel (all runs theta-bins and "
                   "inclined-shape when both files carry incident_theta, particle-bins when both carry particle).")
@click.option("--floor-reference", default=None, type=click.Path(exists=True),
              help="A second reference, independent of REFERENCE, with at least as many showers as GENERATED: "
                   "the floors then compare it with REFERENCE at the same sizes (else REFERENCE is split when "
                   "it holds twice the generated showers, else bootstrapped).")
@click.option("--classifier-showers", default=20_000, show_default=True, type=click.IntRange(min=50),
              help="Showers per sample for the high-level classifier test.")
@click.option("--voxel-classifier-showers", default=20_000, show_default=True, type=click.IntRange(min=50),
              help="Showers per sample for the voxel classifier (about a minute at 20,000 on 2 cores); "
                   "fewer is faster and less sensitive.")
@click.option("--bootstrap", "n_bootstrap", default=20, show_default=True, type=click.IntRange(min=2),
              help="Bootstrap resamples behind the errors of separation powers and Wasserstein distances.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0, max=MAX_SEED),
              help="Seed of the subsampling, resampling and classifier training.")
@click.option("--no-plots", is_flag=True, help="Write metrics.json and report.md only (no matplotlib needed).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON on stdout instead of a table.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines on stderr.")
def validate(generated: str, reference: str, output_dir: str, geometry_xml: str | None, n_max: int | None,
             groups: str, floor_reference: str | None, classifier_showers: int, voxel_classifier_showers: int,
             n_bootstrap: int, seed: int, no_plots: bool, as_json: bool, quiet: bool) -> None:
    """Compare generated showers with reference showers: CaloChallenge metrics, report and plots.

    Every figure comes with its statistical error and its floor (a perfect
    surrogate's score at the same sample sizes). Progress per stage goes to
    stderr, with the seconds each stage took (docs/validation.md: what takes long, how to shorten it).

    \b
    $ fastsim validate generated.h5 reference.h5 -o report/
    $ fastsim validate gen.h5 ref.h5 --floor-reference ref2.h5 -o report/
    $ fastsim validate gen.h5 ref.h5 -n 20000 --metrics separation,classifier --json
    """
    import os

    from fastsim.geometry import DATASET_BINNINGS, CylindricalGeometry, load_detector
    from fastsim.validation import (
        format_energy_table,
        format_inclined_table,
        format_particle_table,
        format_table,
        format_theta_table,
        format_worst,
        write_report,
    )

    def progress(line: str) -> None:
        if not quiet:
            click.echo(f"validate: {line}", err=True)

    geometry: CylindricalGeometry | None
    if geometry_xml in DATASET_BINNINGS:
        geometry = load_detector(geometry_xml)[0]  # the binning fastsim ships for that dataset
    else:
        geometry = CylindricalGeometry.from_xml(geometry_xml) if geometry_xml else None
    result = write_report(generated, reference, output_dir, geometry, groups, n_max, plots=not no_plots,
                          floor_reference=floor_reference, classifier_n=classifier_showers,
                          voxel_classifier_n=voxel_classifier_showers, n_bootstrap=n_bootstrap, seed=seed,
                          progress=progress)
    if as_json:
        _echo_json(result)
        return
    click.echo(format_table(result))
    for table in (format_worst(result), format_energy_table(result), format_theta_table(result),
                  format_particle_table(result), format_inclined_table(result)):
        if table:
            click.echo("")
            click.echo(table)
    click.echo(f"\nreport written to {os.path.join(output_dir, '')} (metrics.json, report.md"
               f"{', plots' if not no_plots else ''})", err=True)


@cli.command()
@click.argument("model", default="default", metavar="[MODEL]")
@click.option("--batch-sizes", default="1,4,16,64,256,1024,4096,16384,65536", show_default=True,
              help="Comma-separated batch sizes to sweep (sizes that would not fit in memory are skipped).")
@click.option("--threads", default=None, metavar="N[,N...]",
              help="Comma-separated intra-op thread counts (default: 1 and the physical cores).")
@click.option("--precision", default="fp32", show_default=True, metavar="fp32[,int8,fp16]",
              help="Comma-separated precisions; a variant is the file NAME-int8.onnx / NAME-fp16.onnx beside MODEL.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]),
              help="Execution device; the limit is sgemm FLOP/s on CPU, matmul and copy bandwidth on CUDA.")
@click.option("--mode", default="iobinding", show_default=True, type=click.Choice(["iobinding", "run"]),
              help="iobinding: preallocated output buffer, as generation uses; run: a new array per call.")
@click.option("--min-time", default=0.3, show_default=True, type=click.FloatRange(min=0.0),
              help="Seconds each point is timed for (at least 3 calls; the median counts).")
@click.option("--no-limit", is_flag=True, help="Do not measure the hardware limit (no fraction column).")
@click.option("--generate-n", default=16384, show_default=True, type=click.IntRange(min=0),
              help="Also time generate(N) in memory per thread count, the runtime's own path (0: skip).")
@click.option("--limit-size", default=2048, show_default=True, type=click.IntRange(min=16),
              help="Matrix size of the sgemm limit measurement (large enough to be compute-bound).")
@click.option("--json", "as_json", is_flag=True, help="Print the full result document as JSON on stdout.")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="Also write the JSON result document to this file.")
def bench(model: str, batch_sizes: str, threads: str | None, precision: str, device: str, mode: str, min_time: float,
          no_limit: bool, generate_n: int, limit_size: int, as_json: bool, output: str | None) -> None:
    """Measure decode throughput: showers/s, µs/shower and fraction of the hardware limit.

    Sweeps batch size x threads x precision with ONNX Runtime and reports each
    point against the large-matrix sgemm FLOP/s measured on the same cores.

    \b
    $ fastsim bench
    $ fastsim bench calo-electron --batch-sizes 64,1024 --threads 1,2 --precision fp32,int8
    """
    from fastsim import bench as bench_lib

    def show(point: bench_lib.DecodePoint) -> None:
        if not as_json:
            click.echo(f"  {point.precision} threads={point.threads} batch={point.batch_size}: "
                       + (f"skipped ({point.skipped})" if point.skipped else
                          f"{point.showers_per_s:,.0f} showers/s, {point.us_per_shower:.2f} µs/shower"),
                       err=True)

    doc = bench_lib.run(model, batch_sizes=batch_sizes, threads=threads, precisions=precision, device=device,
                        mode=mode, min_time=min_time, limit=not no_limit, limit_size=limit_size,
                        generator_n=generate_n, progress=show)
    if output:
        from fastsim._util import atomic_write_text

        atomic_write_text(output, json.dumps(doc, indent=2) + "\n", what="--output")
    if as_json:
        _echo_json(doc)
        return
    machine, spec = doc["machine"], doc["model"]
    click.echo(f"{spec['name']} {spec['version']} ({spec['path']})")
    click.echo(f"machine: {machine['cpu']}, {machine['physical_cores']} physical cores, "
               f"load average {machine['loadavg'][0]:.2f}; onnxruntime {machine['versions']['onnxruntime']}")
    flops = spec.get("flops_per_shower")
    click.echo(f"model FLOPs per shower: {flops / 1e6:.3f} M" if flops else
               f"model FLOPs per shower: unknown ({spec.get('flops_note')})")
    for key, limit in (doc.get("limits") or {}).items():
        if limit and "flop_per_s" in limit:
            click.echo(f"limit ({key} threads): {limit['flop_per_s'] / 1e9:.1f} GFLOP/s sgemm, {limit['source']}")
    click.echo(bench_lib.format_table(bench_lib.DecodePoint(**p) for p in doc["points"]))
    for rate in doc.get("generator", []):
        fraction = "" if rate["fraction_of_limit"] is None else f", {rate['fraction_of_limit']:.2f} of the limit"
        click.echo(f"generate({rate['n']}) in memory, {rate['threads']} thread(s): "
                   f"{rate['showers_per_s']:,.0f} showers/s, {rate['us_per_shower']:.2f} µs/shower{fraction}")


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def main(args: list[str] | None = None) -> None:
    """Entry point: run the command; bad input becomes one line on stderr and exit status 2."""
    try:
        code = cli.main(args=args, prog_name="fastsim", standalone_mode=False)
    except click.ClickException as exc:
        ctx: click.Context | None = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            click.echo(ctx.get_help())  # `fastsim` alone shows the help, as click does
            sys.exit(0)
        click.echo(f"fastsim: error: {_one_line(exc.format_message())}", err=True)
        code = EXIT_USAGE
    except FastsimError as exc:
        click.echo(f"fastsim: error: {_one_line(str(exc))}", err=True)
        code = EXIT_USAGE
    except click.Abort:
        click.echo("fastsim: aborted", err=True)
        code = EXIT_INTERRUPTED
    except KeyboardInterrupt:
        click.echo("fastsim: interrupted", err=True)
        code = EXIT_INTERRUPTED
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
