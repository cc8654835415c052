"""What the experiments share: the structures in ../shared, FSC crossings between shells, and
writing each experiment's table (Markdown) and figure (PNG) into its output folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ember.io.atomic import atomic_path
from ember.maths.fsc import fsc

STRUCTURES = Path(__file__).resolve().parents[3] / "shared" / "data" / "structures"


def parser(description: str, default_out: str) -> argparse.ArgumentParser:
    """--quick (the CI smoke size), --out DIR, --seed."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a small run (≤ 2 min on 2 cores) for smoke tests")
    p.add_argument("--out", type=Path, default=Path(default_out), help="folder for the table and the figure")
    p.add_argument("--seed", type=int, default=1)
    return p


def structure(name: str) -> Path:
    path = STRUCTURES / name
    if not path.exists():
        raise SystemExit(f"{path}: not found — the experiments read ../shared/data/structures beside the repository")
    return path


def fsc_to(volume: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor) -> np.ndarray:
    """FSC (N//2+1,) of a map against the truth."""
    return fsc(torch.as_tensor(volume).double(), torch.as_tensor(truth).double()).numpy()


def crossing_angstrom(curve: np.ndarray, threshold: float, box: int, pixel: float) -> float:
    """Resolution (Å) where the FSC first falls below `threshold`, linearly interpolated between
    shells (Nyquist if it never does)."""
    below = np.flatnonzero(curve[1:] < threshold)
    if len(below) == 0:
        return 2 * pixel
    i = int(below[0]) + 1
    a, b = curve[i - 1], curve[i]
    shell = i - 1 + (a - threshold) / (a - b) if a != b else float(i)
    return box * pixel / max(shell, 1e-6)


def real_space_cc(volume: np.ndarray, truth: np.ndarray) -> float:
    """Pearson correlation of two maps over the whole box."""
    a, b = np.asarray(volume, float).ravel(), np.asarray(truth, float).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def write_results(out: Path, name: str, rows: list[dict], summary: dict) -> Path:
    """`{name}.md` (a Markdown table of `rows` and the summary) and `{name}.json`."""
    out.mkdir(parents=True, exist_ok=True)
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r[k]) for k in keys) + " |" for r in rows]
    lines += [""] + [f"- {k}: {_fmt(v)}" for k, v in summary.items()]
    with atomic_path(out / f"{name}.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    with atomic_path(out / f"{name}.json") as tmp:
        tmp.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2, default=float) + "\n")
    return out / f"{name}.md"


def _fmt(v: object) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)
