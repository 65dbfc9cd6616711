"""Small helpers shared by ``fastsim`` and ``training``: argument checks, atomic file writes, short messages.

One copy of each, with the strongest guarantee any caller needs:

- :func:`positive_int` -- an integer argument (not a bool, not a float) in range,
  or an error naming the argument, what was expected and what was given;
- :func:`atomic_path` / :func:`atomic_write_text` -- write to a temporary name
  unique to the attempt, beside the target, fsync it, rename it over the target
  and fsync the folder; on any error the temporary file is removed and the
  target is left as it was;
- :func:`ort_message` -- the first line of an ONNX Runtime exception without its
  ``[ONNXRuntimeError] : 1 : FAIL :`` prefix;
- :func:`concat_rows` -- join ``(conditions, showers)`` pieces into one pair;
- :func:`rechunk` -- regroup such pieces into chunks of a fixed number of rows;
- :func:`available_memory` and :func:`format_bytes` -- for checking a run's size before it starts.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np

from fastsim.errors import ArgumentError, OutputError

__all__ = ["AT_LEAST", "CANNOT_WRITE", "atomic_path", "atomic_write_text", "available_memory", "concat_rows",
           "first_line", "format_bytes", "ort_message", "positive_int", "rechunk", "temporary_name"]

#: Rows as a tuple of arrays of equal length: ``(conditions, showers)``, ``(energies, showers, theta, phi)``.
_Rows = TypeVar("_Rows", bound=tuple[np.ndarray, ...])


#: The wording of :func:`positive_int`'s error for a count checked as "an integer >= 1".
AT_LEAST = "{name} must be an integer >= {minimum}, got {value!r}"


def positive_int(value: Any, name: str, *, zero: bool = False, maximum: int | None = None,
                 error: type[Exception] = ArgumentError, message: str | None = None, where: str = "") -> int:
    """``value`` as an int if it is an integer > 0 (>= 0 with ``zero``) and at most ``maximum``; else ``error``.

    Bools and floats are refused even when integral: ``n=True`` or ``n=2.0`` is a
    mistake worth naming. The error reads ``NAME: expected a positive integer,
    got VALUE`` unless ``message`` words it otherwise: a :meth:`str.format`
    template given ``name``, ``value``, ``minimum`` (0 with ``zero``, else 1) and
    ``maximum``, such as :data:`AT_LEAST`. ``where`` (not formatted) leads the
    message as ``WHERE: ``.
    """
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and (value >= 0 if zero else value > 0)
    if not ok or (maximum is not None and value > maximum):
        if message is None:
            bound = f" at most {maximum}" if maximum is not None else ""
            text = f"{name}: expected a {'non-negative' if zero else 'positive'} integer{bound}, got {value!r}"
        else:
            text = message.format(name=name, value=value, minimum=0 if zero else 1, maximum=maximum)
        raise error(f"{where}: {text}" if where else text)
    return int(value)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name if it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def ort_message(exc: BaseException) -> str:
    """The first line of an ONNX Runtime message, without its '[ONNXRuntimeError] : 1 : FAIL :' prefix."""
    return first_line(exc).rsplit(" : ", 1)[-1].strip()


def concat_rows(parts: list[_Rows]) -> _Rows:
    """Join ``(conditions, showers)`` pieces (or tuples of any arrays of equal length) in order.

    One piece is returned as it is, without a copy.
    """
    if len(parts) == 1:
        return parts[0]
    return cast(_Rows, tuple(np.concatenate(column) for column in zip(*parts, strict=True)))


def rechunk(pieces: Iterable[_Rows], size: int) -> Iterator[_Rows]:
    """Regroup row pieces (tuples of arrays of equal length) into chunks of ``size`` rows, in order.

    Every chunk but the last has ``size`` rows, wherever the pieces begin and
    end; a piece that fills whole chunks by itself is passed on in slices,
    without a copy.
    """
    pending: list[_Rows] = []
    n_pending = 0
    for piece in pieces:
        rows, pos = len(piece[0]), 0
        while pos < rows:
            take = size if not pending and rows - pos >= size else min(size - n_pending, rows - pos)
            pending.append(cast(_Rows, tuple(column[pos:pos + take] for column in piece)))
            n_pending += take
            pos += take
            if n_pending == size:
                yield concat_rows(pending)
                pending, n_pending = [], 0
    if pending:
        yield concat_rows(pending)


def temporary_name(path: str | os.PathLike[str], suffix: str = ".tmp") -> Path:
    """A hidden name beside ``path``, unique to this attempt: ``.NAME.<32 hex>SUFFIX``.

    A name too long for the folder's file system is shortened (the unique part
    stays), so a target that can exist always has a temporary name that can too.
    """
    path = Path(path)
    token = uuid.uuid4().hex
    try:
        limit = os.pathconf(path.parent if str(path.parent) else ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    room = limit - len(f"..{token}{suffix}".encode())
    stem = os.fsencode(path.name)[:max(room, 0)].decode(errors="ignore")
    return path.with_name(f".{stem}.{token}{suffix}")


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every OS or file system lets a folder be opened or synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


#: The wording of :func:`atomic_path`'s error when the file cannot be written.
CANNOT_WRITE = "{what} {path!r}: cannot write ({reason})"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, what: str = "output", suffix: str = ".tmp",
                message: str = CANNOT_WRITE) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` durably, on error it is removed.

    The caller writes the whole file to the yielded path (with whatever library
    writes it: ``torch.save``, ``savefig``, ...); the path ends in ``suffix``
    (for writers that go by the file's ending). Then the file is fsynced,
    renamed over ``path`` and the folder fsynced, so after a crash ``path`` is
    either the old file or the complete new one. An ``OSError`` becomes an
    :class:`~fastsim.errors.OutputError` worded by ``message``, a
    :meth:`str.format` template given ``what``, ``path`` (a str) and ``reason``.
    """
    path = Path(path)
    tmp = temporary_name(path, suffix)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise OutputError(message.format(what=what, path=str(path), reason=exc.strerror or exc)) from None
        raise
    _fsync_folder(path.parent if str(path.parent) else Path("."))


def atomic_write_text(path: str | os.PathLike[str], text: str, *, what: str = "output",
                      message: str = CANNOT_WRITE) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and durably (see :func:`atomic_path`)."""
    path = Path(path)
    with atomic_path(path, what=what, message=message) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def format_bytes(nbytes: float) -> str:
    """``1.5 GB``, ``20.9 MB``, ``512 bytes`` (decimal units, three significant digits)."""
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB", "EB"):
        if nbytes < 1000 or unit == "EB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.3g} {unit}"
        nbytes /= 1000
    return ""  # not reached


def available_memory() -> int | None:
    """Bytes of memory this process can still take: the system's MemAvailable, or less under a cgroup limit.

    None where it cannot be told (not Linux): callers then skip their check.
    """
    available = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            return None
    try:  # a container's memory limit (cgroup v2) can be far below the machine's
        with open("/sys/fs/cgroup/memory.max") as fh:
            limit = fh.read().strip()
        if limit.isdigit():
            with open("/sys/fs/cgroup/memory.current") as fh:
                available = min(available, int(limit) - int(fh.read().strip()))
    except (OSError, ValueError):
        pass
    return max(available, 0)
