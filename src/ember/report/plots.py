"""PNG plots (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ember.io.atomic import atomic_path  # noqa: E402


def figure_fsc(
    curves: dict[str, np.ndarray],
    *,
    box: int,
    pixel_size: float,
    thresholds: tuple[float, ...] = (0.5, 0.143),
    title: str = "Fourier shell correlation",
) -> Figure:
    """FSC curves (label → (N//2+1,) values) against spatial frequency in Å⁻¹."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for label, curve in curves.items():
        freq = np.arange(len(curve)) / (box * pixel_size)
        ax.plot(freq, curve, label=label, lw=1.6)
    for t in thresholds:
        ax.axhline(t, color="grey", lw=0.8, ls="--")
        ax.text(0.0, t + 0.01, f"{t}", color="grey", fontsize=8)
    ax.set_xlabel("spatial frequency (Å⁻¹)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlim(0, 0.5 / pixel_size)
    top = ax.twiny()
    top.set_xlim(ax.get_xlim())
    ticks = [t for t in ax.get_xticks() if 0 < t <= 0.5 / pixel_size]
    top.set_xticks(ticks, [f"{1 / t:.1f}" for t in ticks])
    top.set_xlabel("resolution (Å)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return fig


def plot_fsc(path: str | Path, curves: dict[str, np.ndarray], *, box: int, pixel_size: float,
             thresholds: tuple[float, ...] = (0.5, 0.143), title: str = "Fourier shell correlation") -> None:
    """`figure_fsc` as a PNG file."""
    _save(figure_fsc(curves, box=box, pixel_size=pixel_size, thresholds=thresholds, title=title), path)


def plot_angular_distribution(path: str | Path, angles_deg: np.ndarray) -> None:
    """`figure_angular_distribution` as a PNG file."""
    _save(figure_angular_distribution(angles_deg), path)


def figure_angular_distribution(angles_deg: np.ndarray) -> Figure:
    """Histogram of viewing directions (rot vs tilt, degrees; (n, 3)) as an equal-area map."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    rot = angles_deg[:, 0]
    cos_tilt = np.cos(np.radians(angles_deg[:, 1]))
    h = ax.hist2d(rot, cos_tilt, bins=(72, 36), range=((-180, 180), (-1, 1)), cmap="viridis")
    fig.colorbar(h[3], ax=ax, label="particles")
    ax.set_xlabel("rot (°)")
    ax.set_ylabel("cos(tilt)")
    ax.set_title("angular distribution", fontsize=10)
    return fig


def _save(fig, path: str | Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def png_bytes(source: Figure | Path | str | bytes) -> bytes:
    """PNG bytes of a matplotlib figure (rendered, then closed), of a PNG file, or bytes as given."""
    if isinstance(source, bytes):
        return source
    if isinstance(source, Figure):
        buf = io.BytesIO()
        source.tight_layout()
        source.savefig(buf, format="png")
        plt.close(source)
        return buf.getvalue()
    return Path(source).read_bytes()


def figure_central_sections(volumes: list[np.ndarray], labels: list[str]) -> Figure:
    """Central sections (z, y, x = N/2) of each map (N, N, N): one row per map."""
    fig, axes = plt.subplots(len(volumes), 3, figsize=(6.0, 2.0 * len(volumes) + 0.3), dpi=100, squeeze=False)
    for row, vol, label in zip(axes, volumes, labels, strict=True):
        c = vol.shape[0] // 2
        for ax, section, name in zip(row, (vol[c], vol[:, c], vol[:, :, c]), ("z", "y", "x"), strict=True):
            ax.imshow(section, cmap="gray", origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{label}, central {name} section" if name == "z" else f"central {name}", fontsize=8)
    return fig


def figure_image_montage(images: np.ndarray, titles: list[str], columns: int = 8) -> Figure:
    """Images (n, N, N) in a grid, each with its title."""
    rows = int(np.ceil(len(images) / columns))
    cols = min(columns, len(images))
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows + 0.2), dpi=100, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, title in zip(axes.ravel(), images, titles, strict=False):
        ax.imshow(img, cmap="gray", origin="lower")
        ax.set_title(title, fontsize=7)
    return fig


def figure_spectra(sigma2_noise: np.ndarray, tau2: np.ndarray, ssnr: np.ndarray, *, box: int,
                   pixel_size: float, group_sizes: list[tuple[int, float]] | None = None) -> Figure:
    """σ²(ν) per optics group (G, S), τ²(ν) and SSNR(ν) per class (K, S) against spatial
    frequency (Å⁻¹), log scale; shells without a value (≤ 0) are left out. Group g's σ² lies on
    its own image grid, `group_sizes[g]` = (box px, pixel Å) (default: the reference's)."""
    fig, axes = plt.subplots(1, 3, figsize=(11.0, 3.4), dpi=100)
    panels = (("noise σ²(ν)", sigma2_noise, "group"), ("signal prior τ²(ν)", tau2, "class"),
              ("SSNR(ν)", ssnr, "class"))
    for ax, (title, rows, what) in zip(axes, panels, strict=True):
        rows = np.atleast_2d(np.asarray(rows, dtype=float))
        for i, row in enumerate(rows):
            n, a = group_sizes[i] if what == "group" and group_sizes else (box, pixel_size)
            row = row[: n // 2 + 1]
            freq = np.arange(len(row)) / (n * a)
            ok = row > 0
            if ok.any():
                ax.semilogy(freq[ok], row[ok], lw=1.3, label=f"{what} {i + 1}" if len(rows) > 1 else None)
        ax.set_xlabel("spatial frequency (Å⁻¹)")
        ax.set_title(title, fontsize=10)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return fig


def plot_class_sizes(path: str | Path, history: np.ndarray) -> None:
    """Class distribution π_k (fraction of particles) per iteration: history (iterations, K)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=110)
    its = np.arange(1, len(history) + 1)
    for k in range(history.shape[1]):
        ax.plot(its, 100 * history[:, k], marker="o", ms=3, lw=1.4, label=f"class {k + 1}")
    ax.set_xlim(0.5, len(history) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel("iteration")
    ax.set_ylabel("particles (%)")
    ax.set_ylim(0, 100)
    ax.set_title("class sizes", fontsize=10)
    ax.legend(fontsize=8, ncol=min(4, history.shape[1]))
    _save(fig, path)


def plot_class_projections(path: str | Path, volumes: list[np.ndarray], labels: list[str]) -> None:
    """Projections of each class map (N, N, N) along z, y and x: one row per class."""
    fig, axes = plt.subplots(len(volumes), 3, figsize=(6.0, 2.0 * len(volumes) + 0.3), dpi=100, squeeze=False)
    for row, (vol, label) in zip(axes, zip(volumes, labels, strict=True), strict=True):
        for ax, axis, name in zip(row, (0, 1, 2), ("along z", "along y", "along x"), strict=True):
            ax.imshow(vol.sum(axis=axis), cmap="gray", origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{label}, {name}" if axis == 0 else name, fontsize=8)
    _save(fig, path)


def plot_class_montage(path: str | Path, averages: np.ndarray, counts: np.ndarray, columns: int = 10) -> None:
    """2D class averages (K, N, N) sorted by particle count (largest first), each titled with its
    class number and count."""
    order = np.argsort(-counts, kind="stable")
    _save(figure_image_montage(averages[order], [f"{k + 1}: {counts[k]}" for k in order], columns), path)


def plot_guinier(
    path: str | Path,
    x: np.ndarray,
    curves: dict[str, np.ndarray],
    *,
    fit: tuple[float, float, float, float] | None = None,
) -> None:
    """Guinier plot: ln(shell-mean amplitude) (label → (N//2+1,) values, −99 = none) against 1/d² in
    Å⁻²; `fit` = (slope Å², intercept, x from, x to) draws the fitted line over its range."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for label, y in curves.items():
        ok = (y > -99) & (x > 0)
        ax.plot(x[ok], y[ok], label=label, lw=1.6)
    if fit is not None:
        slope, intercept, x0, x1 = fit
        xs = np.array([x0, x1])
        ax.plot(xs, intercept + slope * xs, "k--", lw=1.0, label=f"fit: B = {4 * slope:.1f} Å²")
    ax.set_xlabel("1/d² (Å⁻²)")
    ax.set_ylabel("ln(amplitude)")
    top = ax.twiny()
    top.set_xlim(ax.get_xlim())
    ticks = [t for t in ax.get_xticks() if 0 < t <= x.max()]
    top.set_xticks(ticks, [f"{1 / np.sqrt(t):.1f}" for t in ticks])
    top.set_xlabel("resolution (Å)")
    ax.set_title("Guinier plot", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, path)


def figure_resolution_history(resolutions_angstrom: np.ndarray) -> Figure:
    """Current resolution (Å) per iteration."""
    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=110)
    ax.plot(np.arange(1, len(resolutions_angstrom) + 1), resolutions_angstrom, lw=1.4, marker="o", ms=3)
    ax.set_xlim(0.5, len(resolutions_angstrom) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel("iteration")
    ax.set_ylabel("current resolution (Å)")
    ax.invert_yaxis()
    ax.set_title("resolution", fontsize=10)
    return fig


def plot_resolution_history(path: str | Path, resolutions_angstrom: np.ndarray) -> None:
    """Current resolution (Å) per iteration, as a PNG file."""
    _save(figure_resolution_history(resolutions_angstrom), path)


def plot_local_resolution_histogram(path: str | Path, resolutions_angstrom: np.ndarray, median: float) -> None:
    """Histogram of local resolutions (Å) of the voxels inside the mask, with their median."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=110)
    values = np.asarray(resolutions_angstrom, dtype=float)
    ax.hist(values, bins=min(60, max(10, len(np.unique(np.round(values, 2))))), color="tab:blue", alpha=0.8)
    ax.axvline(median, color="k", ls="--", lw=1.0, label=f"median {median:.2f} Å")
    ax.set_xlabel("local resolution (Å)")
    ax.set_ylabel("voxels inside the mask")
    ax.set_title(f"Local resolution: {values.min():.2f}–{values.max():.2f} Å", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, path)
