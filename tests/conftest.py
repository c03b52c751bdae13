"""Shared test set-up: the tiny real molecules several test files build, and the CUDA skip.

Fixtures (session-scoped, built once; tests must not modify what they return):

* ``peptide``: a factory, ``peptide("AAA") -> (topology, positions, system)``: a peptide built
  from its one-letter sequence (PeptideBuilder, hydrogens by PDBFixer), positions ``(n_atoms, 3)``
  nm, an amber14 ``openmm.System`` without cutoff; one build per sequence.
* ``solvated_peptide``: ``(topology, positions, system)`` of tri-alanine in a 1.8 nm TIP3P box
  with Na+/Cl- ions: several molecules, single-atom ions and a periodic box (PME).
* ``chain``: a factory, ``chain(n_atoms=12, element=carbon) -> (topology, positions nm)``: a bonded
  zig-zag chain, the tiny molecule of the model and ``cgml simulate`` cases.
* ``tiny_propagator``: a factory, ``tiny_propagator(mapping, k=3, hidden=8, model_dt_ps=2.0)``: a new
  untrained ``CGPropagator`` for ``mapping`` (seed 0), small enough to export and run in a test.
* ``kill_after``: ``kill_after(argv, path, seconds, env, until="exists", deadline=60) -> exit status``:
  start the process ``argv``, SIGKILL it ``seconds`` after ``path`` exists / has grown / is rewritten.

Temporary folders come from pytest's own ``tmp_path`` / ``tmp_path_factory``. Tests marked
``cuda`` are skipped on machines without a CUDA GPU.
"""
import io
import os
import signal
import subprocess
import time
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


def _chain(n_atoms=12, element=None):
    """``(topology, positions nm)``: a chain of ``n_atoms`` atoms of ``element`` (carbon), 0.125 nm apart in x."""
    import openmm.app as app

    element = element or app.element.carbon
    topology = app.Topology()
    residue = topology.addResidue("CHN", topology.addChain())
    atoms = [topology.addAtom(f"C{i}", element, residue) for i in range(n_atoms)]
    for a, b in zip(atoms[:-1], atoms[1:]):
        topology.addBond(a, b)
    return topology, np.array([[0.125 * i, 0.08 * (i % 2), 0.0] for i in range(n_atoms)])


@pytest.fixture(scope="session")
def chain():
    """``chain(n_atoms=12, element=carbon) -> (topology, positions nm)``: a bonded zig-zag chain."""
    return _chain


def _tiny_propagator(mapping, k=3, hidden=8, model_dt_ps=2.0):
    from openmm_cgml.model.propagator import CGPropagator, PropagatorConfig

    config = PropagatorConfig(k=k, embed_hidden=8, embed_layers=1, hidden=hidden, n_layers=1, score_hidden=8,
                              score_layers=1)
    torch.manual_seed(0)
    return CGPropagator.from_mapping(mapping, config, model_dt_ps=model_dt_ps, md_steps_per_model_step=1000,
                                     md_timestep_ps=0.002, temperature_K=300.0, accel_std_nm=1e-3,
                                     velocity_std_nm=1e-2)


@pytest.fixture(scope="session")
def tiny_propagator():
    """``tiny_propagator(mapping, k=3, hidden=8, model_dt_ps=2.0) -> CGPropagator``: untrained, seed 0."""
    return _tiny_propagator


def _chain_dataset(root, frames: int, replicas: int, split, equilibration_steps: int):
    from openmm_cgml.coarse_graining import coarse_grain
    from openmm_cgml.generate import generate

    paths = generate("polymer-chain", root / "fine", frames=frames, stride=50, replicas=replicas,
                     params={"length": 5}, platform="Reference", progress=False,
                     equilibration_steps=equilibration_steps)
    return coarse_grain(paths, root / "coarse.h5", mapping="metis", atoms_per_bead=1, k=3, lag=2, split=split)


@pytest.fixture(scope="session")
def chain_dataset():
    """``chain_dataset(root, frames, replicas, split, equilibration_steps) -> coarse.h5``: 10-bead polymer chains
    (Reference platform, frames 50 MD steps apart) as a k=3, lag-2 dataset."""
    return _chain_dataset


def _kill_after(argv, path, seconds, env, until="exists", deadline=60):
    """Start ``argv``; SIGKILL it ``seconds`` after ``path`` is ready; its exit status.

    ``until``: ``"exists"`` (``path`` is there), ``"grown"`` (larger than when the process started) or
    ``"rewritten"`` (its modification time has changed since then, or it has appeared). Waits for that at
    most ``deadline`` seconds, then gives the process ``seconds`` more.
    """
    if until == "exists":
        ready = path.exists
    elif until == "grown":
        size = path.stat().st_size if path.exists() else 0
        ready = lambda: path.exists() and path.stat().st_size > size  # noqa: E731
    elif until == "rewritten":
        before = path.stat().st_mtime_ns if path.exists() else None
        ready = lambda: path.exists() and path.stat().st_mtime_ns != before  # noqa: E731
    else:
        raise ValueError(f"until must be 'exists', 'grown' or 'rewritten', got {until!r}")
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop = time.monotonic() + deadline
    while process.poll() is None and not ready() and time.monotonic() < stop:
        time.sleep(0.005)
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    return process.returncode


@pytest.fixture(scope="session")
def kill_after():
    """``kill_after(argv, path, seconds, env, until="exists", deadline=60) -> exit status`` (see ``_kill_after``)."""
    return _kill_after
