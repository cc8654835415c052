"""Benchmarks print figures; they are not tests. OpenMP threads wait passively, as under the
`ember` command: the variable must be set before the first `import torch` (docs/DECISIONS.md)."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
