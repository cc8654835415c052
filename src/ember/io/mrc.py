"""MRC/MRCS maps and stacks through `mrcfile`.

Arrays are (z, y, x) float32 in C order (x fastest), as RELION writes them; the pixel size in Å
comes from the header voxel size.

Headers that the strict reader refuses (no "MAP " ID string, an unknown machine stamp: files from
older or other programs) are read permissively with a warning naming the file, as RELION reads
them; files whose data block is shorter than the header says are still refused.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import mrcfile
import numpy as np

from ember.errors import EmberInputError
from ember.io.atomic import atomic_path

logger = logging.getLogger(__name__)


def _open_error(path: Path, exc: Exception) -> EmberInputError:
    if not path.exists():
        return EmberInputError(path, "file not found", "check the path")
    return EmberInputError(path, f"not a readable MRC file ({exc})", "re-export it or check it is not truncated")


def _bytes_missing(mrc, path: Path) -> int:
    """How many bytes the file lacks for the data block its header describes (0 if none or unknown)."""
    h = mrc.header
    try:
        itemsize = mrcfile.utils.data_dtype_from_header(h).itemsize
    except ValueError:
        return 0
    expected = 1024 + int(h.nsymbt) + int(h.nx) * int(h.ny) * int(h.nz) * itemsize
    return max(0, expected - path.stat().st_size)


def _open_tolerant(path: Path, opener: Callable, notes: list[str] | None = None):
    """`opener(path, permissive=False)`; if that refuses the header (ValueError), the file opened
    permissively when its data block is complete, with a warning (logged, or appended to `notes`)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return opener(path, permissive=False)
    except (OSError, EOFError) as exc:
        raise _open_error(path, exc) from None
    except ValueError as exc:
        strict = exc
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mrc = opener(path, permissive=True)
    except (ValueError, OSError, EOFError):
        raise _open_error(path, strict) from None
    if mrc.data is None:  # data block shorter than the header says, or an unknown mode
        short = _bytes_missing(mrc, path)
        mrc.close()
        if short:
            raise EmberInputError(
                path,
                f"truncated MRC file: the data block is {short} bytes shorter than the header says ({strict})",
                "re-export or re-copy it",
            )
        reasons = "; ".join(dict.fromkeys(str(w.message) for w in caught))
        raise _open_error(path, reasons or strict)
    note = f"{path}: nonstandard MRC header ({strict}); read permissively, as RELION does"
    if notes is None:
        logger.warning(note)
    else:
        notes.append(note)
    return mrc


def read_map(path: str | Path) -> tuple[np.ndarray, float]:
    """Read a 3D map. Returns (volume (N, N, N) float32, pixel size Å)."""
    path = Path(path)
    with _open_tolerant(path, mrcfile.open) as mrc:
        data = np.asarray(mrc.data, dtype=np.float32).copy()
        pixel = float(mrc.voxel_size.x)
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise EmberInputError(path, f"expected a cubic 3D map, got shape {data.shape}", "")
    if data.shape[0] % 2:
        raise EmberInputError(path, f"box {data.shape[0]} is odd", "resample to an even box")
    if not np.isfinite(data).all():
        raise EmberInputError(path, "map holds NaN or infinite values", "fix or regenerate it")
    return data, pixel


def read_stack(path: str | Path) -> tuple[np.ndarray, float]:
    """Read a stack of 2D images (e.g. class averages). Returns ((K, N, N) float32, pixel size Å)."""
    path = Path(path)
    with _open_tolerant(path, mrcfile.open) as mrc:
        data = np.asarray(mrc.data, dtype=np.float32).copy()
        pixel = float(mrc.voxel_size.x)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3 or data.shape[1] != data.shape[2]:
        raise EmberInputError(path, f"expected a stack of square images, got shape {data.shape}", "")
    if not np.isfinite(data).all():
        raise EmberInputError(path, "stack holds NaN or infinite values", "fix or regenerate it")
    return data, pixel


def write_map(path: str | Path, volume: np.ndarray, pixel_size: float) -> None:
    """Write a float32 map (or stack) atomically with the voxel size in Å in the header."""
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(volume, dtype=np.float32))
            mrc.voxel_size = pixel_size
            if volume.ndim == 3 and Path(path).suffix == ".mrcs":
                mrc.set_image_stack()


class StackWriter:
    """Write a large .mrcs stack a batch at a time through a memory map, then rename atomically."""

    def __init__(self, path: str | Path, n: int, box: int, pixel_size: float) -> None:
        self._ctx = atomic_path(path)
        tmp = self._ctx.__enter__()
        self._mrc = mrcfile.new_mmap(tmp, shape=(n, box, box), mrc_mode=2, overwrite=True)
        self._mrc.set_image_stack()
        self._mrc.voxel_size = pixel_size

    def write(self, start: int, images: np.ndarray) -> None:
        """Store images (B, N, N) at slices start … start+B−1 (0-based)."""
        self._mrc.data[start : start + len(images)] = images

    def close(self, ok: bool = True) -> None:
        self._mrc.close()
        if ok:
            self._ctx.__exit__(None, None, None)
        else:
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)


def open_stack(path: str | Path, notes: list[str] | None = None) -> mrcfile.mrcmemmap.MrcMemmap:
    """Open an image stack memory-mapped for reading; data shape (n, N, N). A nonstandard header
    is warned about (logged, or appended to `notes` for the caller to summarise)."""
    path = Path(path)
    mrc = _open_tolerant(path, lambda p, permissive: mrcfile.mmap(p, mode="r", permissive=permissive), notes)
    if mrc.data is None:
        mrc.close()
        raise EmberInputError(path, "MRC file has no data block", "re-export it")
    return mrc
