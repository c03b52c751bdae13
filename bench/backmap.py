"""Backmapping quality on held-out reference frames of a peptide; prints JSON.

Two independent reference runs of the system (``cgml generate``, cached in
``--cache``): run A is the training data (the fragment library), run B is held
out. The beads of B's frames are backmapped and compared with B's own atoms:

- ``rmsd_nm``: heavy-atom RMSD after superposition (mean over frames, 95% block-bootstrap CI);
- ``chirality_fraction``: stereocentre signs equal to the original frame's;
- ``clashes``: frames with a clash after minimisation (the MD frames' own count is the ceiling);
- ``bead_deviation_nm``: largest distance of a bead from its target after minimisation;
- energies: backmapped and minimised, against B's frames minimised under the same restraints (the fair
  reference) and against B's raw MD energies;
- ``phi_psi_error_deg``: mean absolute circular difference of the backbone torsions.

Baselines: the fragments alone (no minimisation), and the fragments of a one-frame library (one template per
bead: what the library search adds).

    OMP_NUM_THREADS=1 python bench/backmap.py --out bench/results/backmap-alanine-dipeptide.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np

from openmm_cgml import systems
from openmm_cgml.backmap import Backmapper
from openmm_cgml.evaluation.statistics import mean_ci
from openmm_cgml.evaluation.structures import backmap_quality, clashes, heavy_atom_rmsd
from openmm_cgml.generate import generate
from openmm_cgml.io import software_versions
from openmm_cgml.mapping import Mapping
from openmm_cgml.trajectory import FineTrajectory


def evaluate(mapping: Mapping, system, library: np.ndarray, held_out: np.ndarray, md_energy: np.ndarray,
             topology) -> dict:
    backmapper = Backmapper(mapping, system, library)
    row = {"mapping": mapping.method, "n_beads": mapping.n_beads, **backmap_quality(backmapper, held_out, topology)}
    beads = mapping.bead_positions(held_out)
    placed = backmapper.place(beads)._value
    one_template = Backmapper(mapping, system, library[:1]).place(beads)._value
    row.update({
        "rmsd_nm_fragments_only": mean_ci(heavy_atom_rmsd(placed, held_out, topology)),
        "rmsd_nm_one_template_fragments": mean_ci(heavy_atom_rmsd(one_template, held_out, topology)),
        "clashes_fragments_only": int((clashes(placed, topology) > 0).sum()),
        "md_raw_potential_energy_kj_mol": mean_ci(md_energy),
    })
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", default="alanine-dipeptide")
    parser.add_argument("--mappings", nargs="+", default=["backbone", "residue", "metis"])
    parser.add_argument("--library-frames", type=int, default=400, help="frames of run A (1 ps apart)")
    parser.add_argument("--test-frames", type=int, default=100, help="frames of run B (5 ps apart)")
    parser.add_argument("--cache", default="runs/bench-backmap")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    cache = Path(args.cache) / args.system
    reference = systems.load(args.system)
    dt_ps = reference.timestep._value
    runs = {}
    for name, frames, stride, seed in (("A", args.library_frames, int(round(1.0 / dt_ps)), 101),
                                       ("B", args.test_frames, int(round(5.0 / dt_ps)), 202)):
        folder = cache / f"{name}-{frames}x{stride}-seed{seed}"
        paths = sorted(folder.glob("*.h5")) if folder.is_dir() else []
        if not paths:
            paths = generate(args.system, folder, frames=frames, stride=stride, seed=seed, platform="CPU",
                             equilibration_steps=int(round(20.0 / dt_ps)), progress=False)
        with FineTrajectory(paths[0]) as trajectory:
            runs[name] = (np.asarray(trajectory.positions[:], dtype=np.float64),
                          np.asarray(trajectory.potential_energy, dtype=np.float64))
    library, (held_out, md_energy) = runs["A"][0], runs["B"]
    rows = []
    for method in args.mappings:
        mapping = Mapping.build(method, reference.topology, reference.masses, atom_types=reference.atom_types)
        rows.append(evaluate(mapping, reference.system, library, held_out, md_energy, reference.topology))
    report = {
        "benchmark": "backmapping on held-out reference frames",
        "system": args.system,
        "split": {"library": f"run A: {len(library)} frames, 1 ps apart (seed 101)",
                  "test": f"run B: {len(held_out)} frames, 5 ps apart (seed 202), never in the library"},
        "definitions": {"clash": "pair > 3 bonds apart, d < r_i + r_j - 0.04 nm (Bondi heavy atoms, H 0.10 nm), "
                                 "hydrogen bonds excepted", "restraint_kj_mol_nm2": 1e5, "tolerance_kj_mol_nm": 10},
        "hardware": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "versions": software_versions(),
        "rows": rows,
    }
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
