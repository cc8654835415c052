"""`ember select`: keep the particles of chosen classes and/or above a Pmax or log-likelihood threshold.

The optics table and every particle column are kept (image names beside the input STAR are rewritten
for the output's folder); the output is a RELION 3.1 particle STAR file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ember.errors import EmberInputError
from ember.io.particles import rebase_image_names
from ember.io.star import read_particles_star, write_particles_star

CLASS = "rlnClassNumber"
PMAX = "rlnMaxValueProbDistribution"
LOGLIK = "rlnLogLikeliContribution"

# column → (the option that asks for it, where such a column comes from)
_NEEDS = {
    CLASS: ("--class", "select on a classification's run_itNNN_data.star (Class2D/Class3D)"),
    PMAX: ("--min_pmax/--max_pmax", "select on the run_data.star of a refinement or classification"),
    LOGLIK: ("--min_loglik/--max_loglik", "select on the run_data.star of a refinement or classification"),
}


@dataclass(frozen=True)
class SelectResult:
    """Where the selection was written, how many particles it kept of how many, and per chosen class
    (with `classes`) the particles kept and the particles in that class."""

    output: Path
    kept: int
    total: int
    per_class: dict[int, tuple[int, int]] = field(default_factory=dict)


def parse_classes(text: str) -> list[int]:
    """'1,3' → [1, 3] (duplicates dropped, order kept)."""
    try:
        classes = [int(part) for part in text.split(",")]
    except ValueError:
        raise EmberInputError(
            None, f"--class {text!r} is not a comma-separated list of class numbers", "e.g. --class 1,3"
        ) from None
    return list(dict.fromkeys(classes))


def _column(particles: pd.DataFrame, name: str, star: Path) -> pd.Series:
    if name not in particles:
        option, fix = _NEEDS[name]
        raise EmberInputError(star, f"{option} needs {name}, which the particle table lacks", fix)
    return particles[name]


def _threshold(
    particles: pd.DataFrame, name: str, low: float | None, high: float | None, star: Path
) -> np.ndarray | None:
    """Mask of low ≤ column ≤ high (either bound optional; NaN fails); None when neither is given."""
    if low is None and high is None:
        return None
    values = _column(particles, name, star).astype(float).to_numpy()
    mask = np.ones(len(values), dtype=bool)
    if low is not None:
        mask &= values >= low
    if high is not None:
        mask &= values <= high
    return mask


def select_particles(
    star: str | Path,
    output: str | Path,
    classes: list[int] | None = None,
    min_pmax: float | None = None,
    max_pmax: float | None = None,
    min_loglik: float | None = None,
    max_loglik: float | None = None,
) -> SelectResult:
    """Write the particles of `star` that pass every given filter (AND) to `output`, atomically.

    classes: keep rlnClassNumber in this list; min/max_pmax: bounds (inclusive) on
    rlnMaxValueProbDistribution; min/max_loglik: bounds (inclusive) on rlnLogLikeliContribution.
    Image names relative to the input STAR's folder are rewritten for the output's folder.
    Refuses (EmberInputError, nothing written) without a filter, when a needed column is missing,
    for a class number absent from the file and when nothing would be kept.
    """
    star, output = Path(star), Path(output)
    if not classes and all(v is None for v in (min_pmax, max_pmax, min_loglik, max_loglik)):
        raise EmberInputError(
            None, "no filter given", "give --class, --min_pmax/--max_pmax or --min_loglik/--max_loglik"
        )
    if output.is_dir():
        raise EmberInputError(output, "--o is a folder", "give the output file's name, e.g. selected.star")
    table = read_particles_star(star)
    particles = table.particles
    total = len(particles)
    keep = np.ones(total, dtype=bool)

    class_numbers = None
    if classes:
        class_numbers = _column(particles, CLASS, star).to_numpy()
        present = set(pd.unique(class_numbers).tolist())
        absent = [c for c in classes if c not in present]
        if absent:
            raise EmberInputError(
                star,
                f"{'class' if len(absent) == 1 else 'classes'} {', '.join(map(str, absent))} not in {CLASS} "
                f"(present: {', '.join(str(int(c)) for c in sorted(present) if c == c)})",
                "choose among the present classes",
            )
        keep &= np.isin(class_numbers, classes)

    spans = []
    for name, low, high in ((PMAX, min_pmax, max_pmax), (LOGLIK, min_loglik, max_loglik)):
        mask = _threshold(particles, name, low, high, star)
        if mask is not None:
            keep &= mask
            spans.append(f"{name} spans {particles[name].min():g} to {particles[name].max():g}")

    kept = int(keep.sum())
    if kept == 0:
        hint = f" ({'; '.join(spans)})" if spans else ""
        raise EmberInputError(star, f"the selection keeps 0 of {total} particles", f"loosen the filters{hint}")
    per_class = {}
    if class_numbers is not None:
        per_class = {c: (int((keep & (class_numbers == c)).sum()), int((class_numbers == c).sum())) for c in classes}

    table.particles = particles[keep].reset_index(drop=True)
    if "rlnImageName" in table.particles:
        table.particles["rlnImageName"] = rebase_image_names(table.particles["rlnImageName"], star.parent,
                                                             output.parent)
    write_particles_star(output, table)
    return SelectResult(output, kept, total, per_class)
