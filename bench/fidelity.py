"""The polymer fidelity benchmark (``cgml benchmark``) as a bench script; prints its JSON summary.

    OMP_NUM_THREADS=1 python bench/fidelity.py polymer --scale small --out runs/bench-polymer [--model FILE]

Same arguments, outputs (``fidelity.json``, ``report.md`` and plots in
``--out``) and error handling as ``cgml benchmark``; see docs/evaluation.md.
The small scale took 13 minutes on 2 CPU cores from an empty reference
cache, about 3 with a filled one (``--cache``).
"""
from __future__ import annotations

import sys

from openmm_cgml.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
