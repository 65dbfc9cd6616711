"""Writing generated showers: CaloChallenge HDF5 (or .npy/.npz), atomically, resumably.

:class:`ShowerWriter` writes rows ``[0, n)`` of one output file (global samples
``[start, start + n)`` of a run) so that no half-written file ever looks
finished: each attempt writes ``NAME.<12 hex>.partial`` of its own and renames
it when complete, holding an advisory lock on ``NAME.lock`` (:class:`OutputLock`)
so a second run writing the same output is refused with one line. Sizes that
cannot work are refused before anything is written; a disk that fills up ends
the run with one line saying whether the partial file was kept (``--resume``)
or removed. With ``resume=True`` it continues an interrupted run of the same
arguments (:func:`find_partial`), bitwise identical to an uninterrupted one.
:func:`write_batches` overlaps decoding with writing on one background thread.
The layout, the write path (``pwrite``, ``O_DIRECT``) and the resume protocol
are in ``docs/io.md``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import mmap
import os
import queue
import re
import shutil
import threading
import uuid
import zipfile
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from fastsim._util import first_line, format_bytes
from fastsim._version import __version__
from fastsim.errors import ArgumentError, OutputError

__all__ = [
    "ATTR_PREFIX",
    "FORMATS",
    "LOCK_SUFFIX",
    "PARTIAL_SUFFIX",
    "WRITE_QUEUE",
    "OutputLock",
    "ShowerWriter",
    "aligned_empty",
    "check_free_space",
    "check_mev_units",
    "check_output_folder",
    "check_output_path",
    "check_output_size",
    "find_partial",
    "output_format",
    "parse_compression",
    "partial_progress",
    "read_output",
    "write_batches",
]

FORMATS = ("h5", "npz", "npy")
PARTIAL_SUFFIX = ".partial"
LOCK_SUFFIX = ".lock"
# Longest addition to an output name: the partial file's ".<12 hex>.partial".
_PARTIAL_EXTRA = len(".0123456789ab" + PARTIAL_SUFFIX)
ATTR_PREFIX = "fastsim."
_SUFFIX_FORMATS = {".h5": "h5", ".hdf5": "h5", ".hdf": "h5", ".npz": "npz", ".npy": "npy"}
# Target size of one HDF5 chunk of compressed showers; rows per chunk is a power of two
# so that the usual power-of-two batch sizes write whole chunks.
_CHUNK_BYTES = 1 << 20
# Uncompressed showers are one contiguous dataset, aligned to this many bytes in the file,
# written with O_DIRECT where the file system allows: taking ~1 GB/s of new data into the
# page cache cost the kernel as much CPU as decoding it (measured: benchmarks/README.md).
_DIRECT_ALIGN = 4096
# The largest offset a file can have (off_t is signed 64-bit).
_MAX_FILE_BYTES = 2**63 - 1
# Room a compressed batch may need beyond its raw size: chunk index and object headers.
_METADATA_SLACK = 1 << 20
#: Batches decoded ahead of the writer thread (bounded, so memory stays flat in n).
WRITE_QUEUE = 2
# Attributes that must agree for a partial file to be resumed.
_RUN_KEYS = ("seed", "n", "start", "model_sha256", "conditions", "n_voxels", "n_conditions")


def aligned_empty(shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """An uninitialised array whose data starts on a page boundary (what O_DIRECT writes need)."""
    count = int(np.prod(shape))
    buffer = mmap.mmap(-1, max(1, count * np.dtype(dtype).itemsize))
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


def output_format(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """The output format: ``fmt`` if given, else from the file suffix (.h5/.hdf5, .npz, .npy)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ArgumentError(f"format: expected one of {list(FORMATS)}, got {fmt!r}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIX_FORMATS:
        raise ArgumentError(f"output: cannot tell the format from {str(path)!r}; use a .h5, .npz or .npy "
                            "suffix or pass the format explicitly")
    return _SUFFIX_FORMATS[suffix]


def parse_compression(compression: str | None, fmt: str = "h5") -> tuple[str | None, int | None]:
    """``None``/``"none"``, ``"gzip"``, ``"gzip:LEVEL"`` or ``"lzf"`` -> (filter, level)."""
    if compression is None or compression == "none":
        return None, None
    name, _, level_text = str(compression).partition(":")
    level = None
    if level_text:
        if not level_text.isdigit() or not 0 <= int(level_text) <= 9:
            raise ArgumentError(f"compression: gzip level must be 0-9, got {level_text!r}")
        level = int(level_text)
    if name not in ("gzip", "lzf") or (name == "lzf" and level_text):
        raise ArgumentError(f"compression: expected none, gzip, gzip:LEVEL (0-9) or lzf, got {compression!r}")
    if fmt == "npy":
        raise ArgumentError("compression: .npy output cannot be compressed; use .h5 or .npz")
    if fmt == "npz" and name != "gzip":
        raise ArgumentError(f"compression: .npz supports gzip (deflate) only, got {compression!r}")
    return name, (4 if name == "gzip" and level is None else level)


def _partial_name(path: Path) -> re.Pattern[str]:
    """Names of ``path``'s partial files: ``NAME.<12 hex>.partial`` (one per attempt), or ``NAME.partial``
    as fastsim 0.x wrote it."""
    return re.compile(re.escape(path.name) + r"(\.[0-9a-f]{12})?" + re.escape(PARTIAL_SUFFIX) + "$")


def _new_partial(path: Path) -> Path:
    """A partial-file name unique to this attempt: ``NAME.<12 hex>.partial``."""
    return path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}")


def _partials(path: Path) -> list[Path]:
    folder = path.parent if str(path.parent) else Path(".")
    pattern = _partial_name(path)
    try:
        return sorted(p for p in folder.iterdir() if pattern.match(p.name))
    except OSError:
        return []


def _progress_of(partial: Path) -> int:
    import h5py

    # First without a file lock: this is a peek that may run while another process writes.
    # HDF5 refuses that when this process has the file open already; then open it normally.
    for locking in (False, None):
        try:
            with h5py.File(partial, "r", locking=locking) as fh:
                return int(fh.attrs.get(ATTR_PREFIX + "progress", 0))
        except (OSError, ValueError, TypeError, RuntimeError):
            continue
    return 0


def find_partial(path: str | os.PathLike[str]) -> Path | None:
    """The partial file an interrupted run of ``path`` left (the one with the most rows), or None."""
    found = _partials(Path(path))
    if len(found) > 1:
        found.sort(key=lambda p: (_progress_of(p), p.stat().st_mtime if p.exists() else 0.0))
    return found[-1] if found else None


def partial_progress(path: str | os.PathLike[str]) -> int:
    """Rows already complete in the partial HDF5 file of ``path`` (0 if there is none or it is unreadable)."""
    partial = find_partial(path)
    return 0 if partial is None or not partial.is_file() else _progress_of(partial)


class OutputLock:
    """An advisory lock on ``NAME.lock`` beside an output: one writer per output file at a time.

    ``fcntl.flock`` on the lock file; the kernel drops it when the process ends,
    however it ends, so a killed run never blocks the next. The holder's pid is
    written into the file for the message that refuses a second writer. Where
    the file system offers no flock (some network file systems), writing goes on
    unlocked, as before; every attempt still writes to its own partial file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + LOCK_SUFFIX)
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        try:
            import fcntl
        except ImportError:  # not a POSIX system
            return self
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(f"output: cannot create the lock file {str(self.lock_path)!r}: "
                                  f"{exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                raise OutputError(f"output: another fastsim run{holder} is writing {str(self.path)!r}; let it "
                                  "finish or stop it first") from None
            except OSError:  # no flock on this file system: go on unlocked
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(self.lock_path)
                return self
            # The previous holder may have removed the file between our open and flock:
            # then we hold a lock nobody else sees; start again on the current file.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock_path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.lock_path)  # while still held, so no one locks a removed file
        os.close(fd)

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {text})" if text.isdigit() else ""


def _lock_held(path: Path) -> str | None:
    """`` (pid N)`` or ``""`` if another process holds ``path``'s output lock now, None if nobody does."""
    try:
        import fcntl

        fd = os.open(path.with_name(path.name + LOCK_SUFFIX), os.O_RDONLY)
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _read_pid(fd)
    except OSError:
        return None
    finally:
        os.close(fd)  # closing drops the probe's shared lock


def check_output_size(folder: str | os.PathLike[str], n: int, n_voxels: int, n_conditions: int = 1, *,
                      compressed: bool = False) -> None:
    """Refuse, before anything is written, a run whose output cannot exist.

    ``n`` rows of float32 showers, energy and conditions: larger than the largest
    file (2^63 bytes) is refused always; larger than the free space of ``folder``
    when uncompressed (a compressed size is only known as it is written, so those
    are checked batch by batch, see :meth:`ShowerWriter.write`).
    """
    row = _row_bytes(n_voxels, n_conditions)
    if n * row > _MAX_FILE_BYTES:
        raise OutputError(f"n: {n} showers of {n_voxels} voxels would take {format_bytes(n * row)}, more than "
                          f"any file can hold ({format_bytes(_MAX_FILE_BYTES)})")
    if not compressed:
        check_free_space(folder, n * row, f"writing {n} showers uncompressed")


def _row_bytes(n_voxels: int, n_conditions: int) -> int:
    """Bytes a row takes uncompressed: float32 showers and energy; with several conditions, all of them
    as float32 ``conditions`` and each one other than energy as its own float64 dataset."""
    extra = 4 * n_conditions + 8 * (n_conditions - 1) if n_conditions > 1 else 0
    return 4 * (n_voxels + 1) + extra


def check_free_space(folder: str | os.PathLike[str], nbytes: int, what: str) -> None:
    """Refuse to start writing ``nbytes`` into ``folder`` when its file system has less free space."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # cannot tell: the write itself will say
    if nbytes > free:
        raise OutputError(f"output: {what} needs {format_bytes(nbytes)}, "
                          f"but {str(folder)!r} has {format_bytes(free)} free")


def _companion(path: Path) -> Path:
    """For .npy output, the incident energies go to ``NAME.incident_energies.npy``."""
    return path.with_name(path.stem + ".incident_energies.npy")


def check_mev_units(spec: Any) -> None:
    """Refuse a model whose energies are not in MeV: output files (CaloChallenge layout) store MeV.

    Rescaling instead would make the file's bytes differ from the decoder's output,
    which the resume and shard checksums compare; a model in other units is better
    re-exported with MeV in and out.
    """
    units = {f"condition {c.name!r}": c.unit for c in spec.conditions if c.name == "incident_energy"}
    units[f"output {spec.output.name!r}"] = spec.output.unit
    wrong = [f"{what} is in {unit}" for what, unit in units.items() if unit != "MeV"]
    if wrong:
        raise OutputError(f"model: output files store energies in MeV (CaloChallenge layout), but its "
                          f"{' and '.join(wrong)}; re-export the model with MeV inputs and outputs")


def check_output_path(path: str | os.PathLike[str], *, force: bool = False, resume: bool = False,
                      fmt: str | None = None) -> Path:
    """Check that ``path`` can be written: its folder exists and is writable, it is not in the way.

    Also that no other run is writing it now (see :class:`OutputLock`) and that
    the names of its partial files fit the file system.
    """
    try:
        return _check_output(Path(path), force, resume, fmt, probe_lock=True)
    except OSError as exc:  # e.g. a folder name too long for the file system
        raise OutputError(f"output: cannot use {str(path)[:80]!r}: {exc.strerror or exc}") from None


def check_output_folder(path: Path) -> Path:
    """The folder that will hold ``path``: it must exist and be writable (OutputError otherwise)."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise OutputError(f"output: folder {str(folder)!r} {problem}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output: folder {str(folder)!r} is not writable")
    return folder


def _check_output(path: Path, force: bool, resume: bool, fmt: str | None, *, probe_lock: bool) -> Path:
    fmt = output_format(path, fmt)
    folder = check_output_folder(path)
    longest = max([path.name] + ([_companion(path).name] if fmt == "npy" else []), key=lambda n: len(os.fsencode(n)))
    try:
        name_max = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    if len(os.fsencode(longest)) + _PARTIAL_EXTRA > name_max:
        raise OutputError(f"output: file name {path.name[:40]!r}... is too long: {len(os.fsencode(path.name))} "
                          f"bytes, and while it is written it gets a {_PARTIAL_EXTRA}-byte suffix; this file system "
                          f"allows {name_max} bytes, so use a name of at most "
                          f"{name_max - _PARTIAL_EXTRA - (len(os.fsencode(longest)) - len(os.fsencode(path.name)))}"
                          " bytes")
    if path.is_dir():
        raise OutputError(f"output: {str(path)!r} is a folder, expected a file name")
    if resume and fmt != "h5":
        raise OutputError(f"resume: only HDF5 output (.h5) can be resumed, got {fmt!r} output")
    if resume and force:
        raise OutputError("resume/force: give one of --resume and --force, not both")
    holder = _lock_held(path) if probe_lock else None
    if holder is not None:
        raise OutputError(f"output: another fastsim run{holder} is writing {str(path)!r}; let it finish or "
                          "stop it first")
    targets = [path] + ([_companion(path)] if fmt == "npy" else [])
    existing = [str(p) for p in targets if p.exists() or p.is_symlink()]  # a dangling link is in the way too
    if existing and not force:
        hint = "pass --force to overwrite" + ("" if resume else " or --resume to continue a partial run")
        raise OutputError(f"output: {existing[0]!r} already exists; {hint}")
    partial = find_partial(path)
    if not resume and not force and partial is not None:
        raise OutputError(f"output: an interrupted run left {str(partial)!r}; pass --resume to "
                          "continue it or --force to start again")
    if resume and (partial is None or not partial.is_file()):
        raise OutputError(f"resume: no partial run of {str(path)!r} to resume (no {path.name}.*{PARTIAL_SUFFIX} "
                          "file beside it)")
    return path


def _chunk_rows(n: int, n_voxels: int) -> int:
    rows = 1
    while rows * 2 * n_voxels * 4 <= _CHUNK_BYTES:
        rows *= 2
    return max(1, min(rows, n))


def _encode(value: Any) -> Any:
    """HDF5 attribute value: dicts and lists as JSON text, numbers and strings as they are."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    return value


class ShowerWriter:
    """Writes rows [0, n) of one output file, in order, to ``NAME.partial``; renames on :meth:`close`.

    ``attrs`` describe the run and are stored as ``fastsim.*`` HDF5 attributes
    (for .npy/.npz they are not stored); the keys ``seed``, ``n``, ``start``,
    ``model_sha256``, ``conditions`` identify it for resuming. ``condition_names``
    are the columns of the conditions; the column named ``incident_energy`` (else
    the first) becomes ``incident_energies`` and, with several conditions, all of
    them are also stored as ``conditions`` and each other one as its own (N, 1)
    float64 dataset (.npz: array) named after it, e.g. ``incident_theta``. A .npy
    file holds one array: it is refused for a model with several conditions.

    With ``resume=True`` an existing partial HDF5 file of the same run is
    continued from :attr:`done`. Use as a context manager: on an error the
    partial file is kept when rows were written (so it can be resumed),
    removed otherwise.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        n: int,
        n_voxels: int,
        condition_names: tuple[str, ...] = ("incident_energy",),
        attrs: Mapping[str, Any] | None = None,
        fmt: str | None = None,
        compression: str | None = None,
        resume: bool = False,
        force: bool = False,
    ) -> None:
        self.path = check_output_path(path, force=force, resume=resume, fmt=fmt)
        self.format = output_format(self.path, fmt)
        # One writer per output: the lock is held until close/abort, and the checks are
        # repeated under it (another run may have finished or started meanwhile).
        self._lock = OutputLock(self.path).acquire()
        try:
            self._open(n, n_voxels, condition_names, attrs, fmt, compression, resume, force)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, n: int, n_voxels: int, condition_names: tuple[str, ...], attrs: Mapping[str, Any] | None,
              fmt: str | None, compression: str | None, resume: bool, force: bool) -> None:
        _check_output(self.path, force, resume, fmt, probe_lock=False)
        # Each attempt writes its own partial file; a resumed run continues the one it finds.
        found = find_partial(self.path) if resume else None
        self.partial = found if found is not None else _new_partial(self.path)
        self._companion_partial = _new_partial(_companion(self.path))
        self.n, self.n_voxels = int(n), int(n_voxels)
        self.condition_names = tuple(condition_names)
        self.energy_column = (self.condition_names.index("incident_energy")
                              if "incident_energy" in self.condition_names else 0)
        #: (column, dataset name) of the conditions stored on their own, beside incident_energies.
        self.named_columns = [(j, name) for j, name in enumerate(self.condition_names)
                              if j != self.energy_column and len(self.condition_names) > 1]
        clash = {"showers", "incident_energies", "conditions"} & {name for _, name in self.named_columns}
        clash |= {name for _, name in self.named_columns if "/" in name or name in ("", ".")}
        if clash:
            raise OutputError(f"model: condition name(s) {sorted(clash)} cannot name output datasets (they clash "
                              "with showers, incident_energies or conditions, or are not plain names)")
        if self.format == "npy" and self.named_columns:
            raise OutputError(f"output: a .npy file holds the showers and energies only, but the model has "
                              f"conditions {list(self.condition_names)}; write .h5 or .npz to keep them all")
        self.attrs = {**dict(attrs or {}), "n": self.n, "n_voxels": self.n_voxels,
                      "n_conditions": len(self.condition_names),
                      "condition_names": list(self.condition_names), "version": __version__}
        self.compression, self.compression_level = parse_compression(compression, self.format)
        self.done = 0
        self._file: Any = None
        self._closed = False
        self._h5_failed = False  # HDF5 reported a write error: the file cannot be trusted or resumed
        # A contiguous showers dataset is written with pwrite at its offset: through the
        # page cache (_raw) and, for page-aligned rows and memory, with O_DIRECT (_direct).
        self._raw: int | None = None
        self._direct: int | None = None
        self._data_offset = 0
        self.bytes_direct = 0  # shower bytes this writer sent with O_DIRECT
        self.bytes_written = 0  # all shower bytes this writer wrote
        if resume:
            self._reopen()
            try:
                check_output_size(self.partial.parent, self.n - self.done, self.n_voxels, len(self.condition_names),
                                  compressed=self.compression is not None)
            except OutputError:
                self.abort()  # the partial file stays, for when there is room
                raise
        else:
            check_output_size(self.partial.parent, self.n, self.n_voxels, len(self.condition_names),
                              compressed=self.compression is not None)
            self._create()

    @property
    def _row_bytes(self) -> int:
        """Bytes one row takes uncompressed: showers, energy and (with several conditions) conditions."""
        return _row_bytes(self.n_voxels, len(self.condition_names))

    # -- opening ---------------------------------------------------------------------------
    def _create(self) -> None:
        # Partial files of earlier attempts (only --force gets here with one): under the
        # lock, no live run writes them.
        for old in _partials(self.path) + _partials(_companion(self.path)):
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
        try:
            if self.format == "h5":
                self._create_h5()
            elif self.format == "npz":
                self._create_npz()
            else:
                self._create_npy()
        except (OSError, RuntimeError) as exc:  # h5py raises either for a failed write
            self._h5_failed = self.format == "h5"
            self.abort()
            raise OutputError(f"output: cannot create {str(self.partial)!r}: {_os_reason(exc)}") from None
        except BaseException:
            self.abort()  # never leave a partial file that a later --resume would trust
            raise

    def _create_h5(self) -> None:
        import h5py

        self._file = h5py.File(self.partial, "w", libver="earliest",
                               alignment_threshold=1 << 16, alignment_interval=_DIRECT_ALIGN)
        options: dict[str, Any] = {}
        if self.compression:
            options = {"compression": self.compression, "compression_opts": self.compression_level}
        self._file.create_dataset("incident_energies", shape=(self.n, 1), dtype="float32",
                                  chunks=(min(self.n, 1 << 16), 1), **options)
        if self.compression:
            rows = _chunk_rows(self.n, self.n_voxels)
            self._file.create_dataset("showers", shape=(self.n, self.n_voxels), dtype="float32",
                                      chunks=(rows, self.n_voxels), **options)
        else:
            # Contiguous, its file space allocated now (so its offset is known) and never
            # filled (a sparse file until written).
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
            h5py.h5d.create(self._file.id, b"showers", h5py.h5t.IEEE_F32LE,
                            h5py.h5s.create_simple((self.n, self.n_voxels)), dcpl=dcpl)
        if len(self.condition_names) > 1:
            self._file.create_dataset("conditions", shape=(self.n, len(self.condition_names)), dtype="float32",
                                      chunks=(min(self.n, 1 << 14), len(self.condition_names)), **options)
        for _, name in self.named_columns:
            self._file.create_dataset(name, shape=(self.n, 1), dtype="float64", chunks=(min(self.n, 1 << 16), 1),
                                      **options)
        for key, value in self.attrs.items():
            self._file.attrs[ATTR_PREFIX + key] = _encode(value)
        self._file.attrs[ATTR_PREFIX + "progress"] = 0
        self._file.flush()
        self._open_raw()

    def _open_raw(self) -> None:
        """Descriptors for a contiguous showers dataset: plain, and O_DIRECT where it is aligned and allowed.

        h5py then never writes the showers (its sieve buffer could otherwise write
        stale bytes over rows that went around it); chunked datasets stay with h5py.
        """
        dataset = self._file["showers"]
        offset = dataset.id.get_offset()
        if dataset.chunks is not None or offset is None:
            return
        self._raw, self._data_offset = os.open(self.partial, os.O_WRONLY), offset
        if offset % _DIRECT_ALIGN == 0 and hasattr(os, "O_DIRECT"):
            try:
                self._direct = os.open(self.partial, os.O_WRONLY | os.O_DIRECT)
            except OSError:  # e.g. tmpfs: no O_DIRECT, the plain descriptor does it all
                pass

    def _close_raw(self) -> None:
        for name in ("_direct", "_raw"):
            fd = getattr(self, name)
            setattr(self, name, None)  # first, so nothing can write to a reused descriptor number
            if fd is not None:
                os.close(fd)

    @property
    def direct_fraction(self) -> float:
        """Fraction of the shower bytes written so far that went with O_DIRECT."""
        return self.bytes_direct / self.bytes_written if self.bytes_written else 0.0

    def _write_showers(self, showers: np.ndarray) -> None:
        """Rows [done, done + k): by pwrite at the dataset's offset (the page-aligned middle with
        O_DIRECT), or through h5py for a chunked dataset."""
        k, row_bytes = len(showers), self.n_voxels * 4
        if self._raw is None:
            dataset = self._file["showers"]
            step = dataset.chunks[0]
            for first in range(0, k, step):  # in pieces: h5py holds the GIL for each write
                last = min(k, first + step)
                dataset[self.done + first:self.done + last] = showers[first:last]
            self.bytes_written += k * row_bytes
            return
        plain = [(0, k)]
        if self._direct is not None:
            period = _DIRECT_ALIGN // math.gcd(row_bytes, _DIRECT_ALIGN)  # rows between aligned offsets
            lo = min(k, -self.done % period)
            hi = lo + (k - lo) // period * period
            # The memory must be page-aligned too (the generator's run buffers are).
            if hi > lo and showers[lo:].ctypes.data % _DIRECT_ALIGN == 0 and self._pwrite(showers, lo, hi, direct=True):
                plain = [(0, lo), (hi, k)]
        for lo, hi in plain:
            if hi > lo:
                self._pwrite(showers, lo, hi, direct=False)

    def _pwrite(self, showers: np.ndarray, lo: int, hi: int, *, direct: bool) -> bool:
        """Write rows lo..hi of ``showers`` to file rows done + lo...; False if O_DIRECT is refused outright."""
        # numpy's stubs give ndarray __buffer__ (the Buffer protocol) for Python >= 3.12 only (hence unused there).
        view = memoryview(showers[lo:hi]).cast("B")  # type: ignore[arg-type, unused-ignore]
        start = position = self._data_offset + (self.done + lo) * self.n_voxels * 4
        fd = self._direct if direct else self._raw
        assert fd is not None  # _write_showers calls this only with the descriptor open
        try:
            while len(view):
                written = os.pwrite(fd, view, position)
                view, position = view[written:], position + written
        except OSError as exc:
            if not direct or exc.errno != errno.EINVAL or position != start:
                raise
            self._direct = None  # this file system takes no O_DIRECT writes
            os.close(fd)
            return False
        self.bytes_written += position - start
        self.bytes_direct += (position - start) if direct else 0
        return True

    def _create_npy(self) -> None:
        self._file = open(self.partial, "wb")
        np.lib.format.write_array_header_2_0(
            self._file, {"descr": "<f4", "fortran_order": False, "shape": (self.n, self.n_voxels)})
        self._energies = np.empty((self.n,), dtype=np.float32)

    def _create_npz(self) -> None:
        method = zipfile.ZIP_DEFLATED if self.compression else zipfile.ZIP_STORED
        # The archive writes to a file object opened here, so a failed archive can be dropped
        # without ZipFile trying (and failing) to finish it when it is collected.
        self._zip_file = open(self.partial, "wb")
        self._zip = zipfile.ZipFile(self._zip_file, "w", compression=method, allowZip64=True,
                                    compresslevel=self.compression_level)
        self._file = self._zip.open("showers.npy", "w", force_zip64=True)
        np.lib.format.write_array_header_2_0(
            self._file, {"descr": "<f4", "fortran_order": False, "shape": (self.n, self.n_voxels)})
        # Energies are small (4 bytes a shower): kept in memory and stored after the showers.
        self._energies = np.empty((self.n, len(self.condition_names)), dtype=np.float32)

    def _reopen(self) -> None:
        import h5py

        try:
            self._file = h5py.File(self.partial, "r+")
        except OSError as exc:
            raise OutputError(f"resume: cannot reopen {str(self.partial)!r}: {first_line(exc)}") from None
        try:
            stored = {key: self._file.attrs.get(ATTR_PREFIX + key) for key in _RUN_KEYS}
            progress = self._file.attrs.get(ATTR_PREFIX + "progress")
            showers = self._file.get("showers")
            problems = []
            for key in _RUN_KEYS:
                want = _encode(self.attrs.get(key))
                have = stored[key]
                have = have.item() if isinstance(have, np.generic) else have
                if have != want:
                    problems.append(f"{key} is {have!r} in the file, {want!r} now")
            if progress is None or showers is None or showers.shape != (self.n, self.n_voxels):
                problems.append("the file has no fastsim progress record")
            if problems:
                raise OutputError(f"resume: {str(self.partial)!r} is from a different run: " + "; ".join(problems)
                                  + "; pass --force to start again")
            self.done = int(progress)
            if self.compression is None:
                self.compression = showers.compression
            self._open_raw()
        except BaseException:
            self._close_raw()
            self._file.close()
            self._file = None
            raise

    # -- writing ---------------------------------------------------------------------------
    def write(self, conditions: np.ndarray, showers: np.ndarray) -> None:
        """Append rows: conditions (k, n_conditions) and showers (k, n_voxels)."""
        k = len(showers)
        if self.done + k > self.n:
            raise OutputError(f"output: {self.done + k} rows written to a file of {self.n}")
        conditions = np.asarray(conditions, dtype=np.float32).reshape(k, -1)
        showers = np.ascontiguousarray(showers, dtype=np.float32)
        rows = slice(self.done, self.done + k)
        if self.format == "h5" and self.compression is not None:
            # HDF5 does not recover from a full disk (a later close fails, and at exit HDF5
            # 2.0 crashes on the file it could not close): stop before a batch could fill it.
            # A compressed batch takes at most its raw size, and after the first batch about
            # what the rows so far took (twice that, to be safe), plus a little for the index.
            need = k * self._row_bytes
            try:
                free = shutil.disk_usage(self.partial.parent).free
                if self.done:
                    need = min(need, 2 * k * os.stat(self.partial).st_size // self.done)
            except OSError:
                free = None
            if free is not None and free < need + _METADATA_SLACK:
                raise OutputError(f"output: {str(self.partial.parent)!r} is nearly full ({format_bytes(free)} free, a "
                                  f"batch of {k} showers may take {format_bytes(need)}); " + self._after_failure())
        in_hdf5 = self._raw is None  # contiguous showers go around HDF5, by pwrite
        try:
            if self.format == "h5":
                self._write_showers(showers)
                in_hdf5 = True
                self._file["incident_energies"][rows] = conditions[:, self.energy_column:self.energy_column + 1]
                if "conditions" in self._file:
                    self._file["conditions"][rows] = conditions
                for j, name in self.named_columns:
                    self._file[name][rows] = conditions[:, j:j + 1].astype(np.float64)
                # Data first, then the progress record: the record never runs ahead of the data.
                self._file.flush()
                self._file.attrs[ATTR_PREFIX + "progress"] = self.done + k
                self._file.flush()
            elif self.format == "npz":
                self._file.write(showers.tobytes())
                self._energies[rows] = conditions
            else:
                self._file.write(showers.tobytes())
                self._energies[rows] = conditions[:, self.energy_column]
        except (OSError, RuntimeError) as exc:
            # h5py raises OSError or RuntimeError for a failed write or flush; after one, the
            # file's metadata may be half-written and HDF5 must not be trusted with it.
            if self.format == "h5" and in_hdf5:
                self._h5_failed = True
            raise OutputError(f"output: writing {str(self.partial)!r} failed: {_os_reason(exc)}; "
                              + self._after_failure()) from None
        self.done += k

    def _keeps_partial(self) -> bool:
        """Whether :meth:`abort` keeps the partial file: HDF5 with rows written and no HDF5 write error."""
        return self.format == "h5" and self.done > 0 and not self._h5_failed

    def _after_failure(self) -> str:
        """What happens to the partial file after a failed write (the end of the error message)."""
        if self._keeps_partial():
            return (f"the {self.done} showers written so far are kept in {str(self.partial)!r}: make room and run "
                    "the same command with --resume to continue, or delete it")
        return f"the partial file {str(self.partial)!r} is removed"

    def close(self) -> Path:
        """Finish the file (all n rows must be written) and rename it to its final name."""
        if self._closed:
            return self.path
        if self.done != self.n:
            raise OutputError(f"output: only {self.done} of {self.n} rows written to {str(self.partial)!r}")
        try:
            self._finish()
        except (OSError, RuntimeError) as exc:
            self._h5_failed = self.format == "h5"
            self.done = 0  # an unfinished file is not worth keeping: abort removes it
            self.abort()
            raise OutputError(f"output: finishing {str(self.partial)!r} failed: {_os_reason(exc)}; "
                              "the partial file is removed") from None
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._lock.release()
        return self.path

    def _finish(self) -> None:
        if self.format == "h5":
            self._close_raw()
            self._file.attrs[ATTR_PREFIX + "complete"] = True
            self._file.close()
        elif self.format == "npz":
            self._file.close()
            names = self.condition_names
            with self._zip.open("incident_energies.npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, self._energies[:, self.energy_column:self.energy_column + 1])
            if len(names) > 1:
                with self._zip.open("conditions.npy", "w", force_zip64=True) as entry:
                    np.lib.format.write_array(entry, self._energies)
            for j, name in self.named_columns:
                with self._zip.open(f"{name}.npy", "w", force_zip64=True) as entry:
                    np.lib.format.write_array(entry, self._energies[:, j:j + 1].astype(np.float64))
            self._zip.close()
            self._zip_file.close()
        else:
            self._file.close()
            with open(self._companion_partial, "wb") as fh:
                np.lib.format.write_array(fh, self._energies.reshape(-1, 1))
            os.replace(self._companion_partial, _companion(self.path))
        self._file = None
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        """Stop writing. An HDF5 partial file with rows in it is kept for resuming; otherwise removed."""
        if self._closed:
            return
        keep = self._keeps_partial()
        try:
            self._close_raw()
            if self._h5_failed and self._file is not None:
                self._abandon_h5()
            if self._file is not None:
                self._file.close()
        except Exception:  # the file is being thrown away or was already broken
            keep = False
        if self.format == "npz" and hasattr(self, "_zip"):
            try:
                self._zip.close()
            except Exception:
                keep = False
                # Nothing more to write: stop ZipFile.__del__ from trying again (and printing).
                self._zip.fp = None
            with contextlib.suppress(OSError):
                self._zip_file.close()
        self._file = None
        self._closed = True
        if not keep:
            self._discard()
        self._lock.release()

    def _abandon_h5(self) -> None:
        """Point HDF5's descriptor of a file it failed to write at an anonymous in-memory file.

        After a failed write (a full disk, an I/O error) HDF5 still holds dirty metadata;
        closing the file would write it again and fail, and HDF5 2.0 then crashes
        (SIGSEGV) at interpreter exit on the file it could not close. The file is being
        discarded, so HDF5 may finish it in memory instead; the real file is removed after.
        """
        try:
            fd = self._file.id.get_vfd_handle()
            sink = os.memfd_create("fastsim-discarded") if hasattr(os, "memfd_create") else None
        except (OSError, RuntimeError, ValueError, TypeError):
            return
        if sink is None:  # no memfd (not Linux): give the file's space back instead
            with contextlib.suppress(OSError):
                os.truncate(self.partial, 0)
            return
        os.dup2(sink, fd)
        os.close(sink)

    def _discard(self) -> None:
        for path in (self.partial, self._companion_partial):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def __enter__(self) -> ShowerWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _os_reason(exc: BaseException) -> str:
    """The operating system's words for a failed write (h5py wraps them in a long message)."""
    if isinstance(exc, OSError) and exc.strerror and not str(exc).startswith("[Errno"):
        return exc.strerror
    match = re.search(r"error message = '([^']+)'", str(exc))
    if match:
        return match.group(1)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return first_line(exc)


def write_batches(
    writer: ShowerWriter,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    on_batch: Callable[[int], object] | None = None,
    queue_size: int = WRITE_QUEUE,
    on_written: Callable[[], None] | None = None,
) -> int:
    """Write every batch to ``writer`` from one background thread while ``batches`` produces the next.

    ``on_batch(k)`` is called (in the caller's thread) after each batch of k
    rows is handed over; ``on_written()`` (in the writer thread) once each
    batch is done with -- written, or skipped after a failure -- so its
    memory can be reused. Returns the number of rows written. An error in the
    writer thread is raised here; the writer itself is not closed.
    """
    pending: queue.Queue[tuple[np.ndarray, np.ndarray] | None] = queue.Queue(maxsize=queue_size)  # None: the end
    failure: list[BaseException] = []

    def drain() -> None:
        while True:
            item = pending.get()
            if item is None:
                return
            try:
                if not failure:  # after a failure, keep draining so the producer never blocks
                    writer.write(*item)
            except BaseException as exc:  # re-raised in the caller's thread
                failure.append(exc)
            finally:
                if on_written is not None:
                    on_written()

    thread = threading.Thread(target=drain, name="fastsim-writer", daemon=True)
    thread.start()
    written = 0
    try:
        for conditions, showers in batches:
            if failure:
                break
            pending.put((conditions, showers))
            written += len(showers)
            if on_batch is not None:
                on_batch(len(showers))
    finally:
        pending.put(None)
        thread.join()
    if failure:
        raise failure[0]
    return written


def read_output(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a whole output file (.h5, .npz or .npy) as (incident_energies (N, 1), showers (N, n_voxels))."""
    path = Path(path)
    fmt = output_format(path)
    if not path.is_file():
        raise OutputError(f"output: {str(path)!r} does not exist")
    if fmt == "h5":
        import h5py

        with h5py.File(path, "r") as fh:
            return fh["incident_energies"][...], fh["showers"][...]
    if fmt == "npz":
        with np.load(path) as archive:
            return archive["incident_energies"], archive["showers"]
    return np.load(_companion(path)), np.load(path)
