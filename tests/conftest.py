"""Shared test set-up: the tiny real molecules several test files build, and the CUDA skip.

Fixtures (session-scoped, built once; tests must not modify what they return):

* ``peptide``: a factory, ``peptide("AAA") -> (topology, positions, system)``: a peptide built
  from its one-letter sequence (PeptideBuilder, hydrogens by PDBFixer), positions ``(n_atoms, 3)``
  nm, an amber14 ``openmm.System`` without cutoff; one build per sequence.
* ``solvated_peptide``: ``(topology, positions, system)`` of tri-alanine in a 1.8 nm TIP3P box
  with Na+/Cl- ions: several molecules, single-atom ions and a periodic box (PME).

Temporary folders come from pytest's own ``tmp_path`` / ``tmp_path_factory``. Tests marked
``cuda`` are skipped on machines without a CUDA GPU.
"""
import io
import os
from functools import lru_cache

os.environ.setdefault("OMP_NUM_THREADS", "2")  # before torch is imported, or it has no effect

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402  (before any openmm import: openmm-torch's plugin needs torch's libraries)

FORCEFIELD = ("amber14-all.xml", "amber14/tip3p.xml")


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``cuda`` cleanly when no GPU is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@lru_cache(maxsize=None)
def _build_peptide(sequence: str):
    import openmm.app as app
    import openmm.unit as unit
    import PeptideBuilder
    from Bio.PDB import PDBIO
    from pdbfixer import PDBFixer

    writer = PDBIO()
    writer.set_structure(PeptideBuilder.make_extended_structure(sequence))
    text = io.StringIO()
    writer.save(text)
    fixer = PDBFixer(pdbfile=io.StringIO(text.getvalue()))
    fixer.findMissingResidues()
    fixer.findMissingAtoms()
    fixer.addMissingAtoms()
    fixer.addMissingHydrogens(7.0)
    forcefield = app.ForceField(*FORCEFIELD)
    system = forcefield.createSystem(fixer.topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds)
    positions = np.array(fixer.positions.value_in_unit(unit.nanometer))
    return fixer.topology, positions, system


@pytest.fixture(scope="session")
def peptide():
    """``peptide(sequence="AAA") -> (topology, positions nm, system)``, built once per sequence."""
    return lambda sequence="AAA": _build_peptide(sequence)


@pytest.fixture(scope="session")
def solvated_peptide(peptide):
    """Tri-alanine in a 1.8 nm TIP3P box with Na+/Cl- ions (0.5 M, neutral): ``(topology, positions nm, system)``."""
    import openmm
    import openmm.app as app
    import openmm.unit as unit

    box_nm = 1.8
    topology, positions, _ = peptide("AAA")
    forcefield = app.ForceField(*FORCEFIELD)
    modeller = app.Modeller(topology, positions * unit.nanometer)
    modeller.addSolvent(forcefield, boxSize=openmm.Vec3(box_nm, box_nm, box_nm) * unit.nanometer,
                        ionicStrength=0.5 * unit.molar, neutralize=True)
    system = forcefield.createSystem(modeller.topology, nonbondedMethod=app.PME,
                                     nonbondedCutoff=0.7 * unit.nanometer, constraints=app.HBonds)
    return modeller.topology, np.array(modeller.positions.value_in_unit(unit.nanometer)), system
