"""The bead-spring heteropolymer builders of the ``polymer-chain``, ``polymer-chains`` and ``polymer-melt`` systems.

After Webb et al. (Sci. Adv. 2020): monomer A is a backbone bead B1 with a solvophobic side bead S1,
monomer B a backbone bead B2 with a solvophilic side bead S2; harmonic bonds, a (1 + cos theta)
backbone stiffness, LJ between attractive pairs and WCA between the others, in implicit solvent.
:func:`build_polymer` takes the checked YAML parameters of :mod:`openmm_cgml.systems` (units
stripped: nm, amu, kJ/mol, K) and returns the Topology, System and positions.
"""
from __future__ import annotations

import numpy as np
import openmm as mm
import openmm.app as app
import openmm.unit as u

from openmm_cgml.units import KELVIN, NM

__all__ = ["build_polymer", "BEAD_TYPES"]

BEAD_TYPES = ("B1", "B2", "S1", "S2")  # atom_types 0..3 of the polymer systems
ISOLATED_CHAIN_SPACING_NM = 50.0  # start positions of isolated chains: far apart, only so that files look tidy


def _polymer_sequences(params: dict, n_chains: int) -> list[str]:
    """Monomer sequences ('A' solvophobic, 'B' solvophilic): given, or drawn from ``sequence_seed``."""
    length = int(params["length"])
    if length < 2:
        raise ValueError(f"length must be at least 2 monomers, got {length}")
    given = params.get("sequence")
    if given:
        given = str(given).upper()
        if set(given) - {"A", "B"}:
            raise ValueError(f"sequence must be made of A (solvophobic) and B (solvophilic), got {given!r}")
        if len(given) != length:
            params["length"] = len(given)
        return [given]
    fraction = float(params.get("fraction_solvophobic", 0.5))
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction_solvophobic must be in [0, 1], got {fraction}")
    rng = np.random.default_rng(int(params.get("sequence_seed", 0)))
    return ["".join(np.where(rng.random(length) < fraction, "A", "B")) for _ in range(n_chains)]


def _isolated_sequences(params: dict) -> list[str]:
    """The explicit ``sequences`` of a ``polymer-chains`` system, checked."""
    sequences = params.get("sequences")
    if not isinstance(sequences, list) or not sequences:
        raise ValueError("a polymer-chains system needs 'sequences': a non-empty list of A/B strings")
    checked = []
    for sequence in sequences:
        text = str(sequence).upper()
        if len(text) < 2 or set(text) - {"A", "B"}:
            raise ValueError(f"each sequence must be at least 2 monomers of A and B, got {sequence!r}")
        checked.append(text)
    return checked


def build_polymer(params: dict):
    """Topology, System and positions of a polymer system from its checked YAML parameters.

    Parameters
    ----------
    params : dict
        The system's YAML values with units stripped (``builder`` one of ``polymer-chain``,
        ``polymer-chains``, ``polymer-melt``). ``params["sequences"]`` is set to the monomer
        sequences built.

    Returns
    -------
    tuple
        ``(openmm.app.Topology, openmm.System, positions)``, positions a Quantity in nanometers.
    """
    periodic = params["builder"] == "polymer-melt"
    isolated = params["builder"] == "polymer-chains"
    n_chains = int(params.get("n_chains", 1)) if periodic else 1
    if n_chains < 1:
        raise ValueError(f"n_chains must be at least 1, got {n_chains}")
    sequences = _isolated_sequences(params) if isolated else _polymer_sequences(params, n_chains)
    params["sequences"] = sequences
    sigma = float(params["sigma_nm"])
    bond_length = float(params["bond_length_nm"])
    if sigma <= 0 or bond_length <= 0:
        raise ValueError("sigma_nm and bond_length_nm must be positive")

    topology = app.Topology()
    bead_types, bonds = [], []
    for sequence in sequences:
        chain = topology.addChain()
        previous_backbone = None
        for monomer in sequence:
            residue = topology.addResidue("MOA" if monomer == "A" else "MOB", chain)
            names = ("B1", "S1") if monomer == "A" else ("B2", "S2")
            backbone = topology.addAtom(names[0], app.element.carbon, residue)
            side = topology.addAtom(names[1], app.element.carbon, residue)
            topology.addBond(backbone, side)
            bonds.append((backbone.index, side.index))
            if previous_backbone is not None:
                topology.addBond(previous_backbone, backbone)
                bonds.append((previous_backbone.index, backbone.index))
            previous_backbone = backbone
            bead_types += [BEAD_TYPES.index(names[0]), BEAD_TYPES.index(names[1])]
    n_beads = len(bead_types)

    box = None
    if periodic:
        density = float(params["density_per_nm3"])
        if density <= 0:
            raise ValueError(f"density_per_nm3 must be positive, got {density}")
        box = (n_beads / density) ** (1.0 / 3.0)
        if box < 2 * params["cutoff_sigma"] * sigma:
            raise ValueError(f"the melt box ({box:.2f} nm for {n_beads} beads) is smaller than twice the cutoff; "
                             f"use more chains or a larger length")
        topology.setPeriodicBoxVectors(np.eye(3) * box * NM)

    system = _polymer_system(params, bead_types, bonds, box, sequences, isolated=isolated)
    rng = np.random.default_rng(int(params.get("conformation_seed", 0)))
    if isolated:  # each chain grown alone, then set apart along x
        positions = np.vstack([_grow_chains([len(s)], bond_length, sigma, None, rng)
                               + [index * ISOLATED_CHAIN_SPACING_NM, 0.0, 0.0]
                               for index, s in enumerate(sequences)])
    else:
        positions = _grow_chains([len(s) for s in sequences], bond_length, sigma, box, rng)
    return topology, system, positions * NM


def _polymer_system(params, bead_types, bonds, box, sequences, isolated: bool = False) -> mm.System:
    """Harmonic bonds, a cosine backbone stiffness, and type-dependent LJ (attractive pairs) or WCA (others).

    ``isolated``: each chain is one interaction group with itself, so chains never see each other.
    """
    kT = (u.MOLAR_GAS_CONSTANT_R * params["temperature_K"] * KELVIN).value_in_unit(u.kilojoule_per_mole)
    sigma = float(params["sigma_nm"])
    system = mm.System()
    for _ in bead_types:
        system.addParticle(float(params["bead_mass_amu"]))
    if box is not None:
        system.setDefaultPeriodicBoxVectors(mm.Vec3(box, 0, 0), mm.Vec3(0, box, 0), mm.Vec3(0, 0, box))

    bond_force = mm.HarmonicBondForce()
    for i, j in bonds:
        bond_force.addBond(i, j, float(params["bond_length_nm"]), float(params["bond_k_kj_per_mol_nm2"]))
    bond_force.setUsesPeriodicBoundaryConditions(box is not None)
    system.addForce(bond_force)

    # Backbone stiffness k (1 + cos theta): zero for a straight backbone, no singularity at 180 degrees.
    angle_force = mm.CustomAngleForce("k_angle*(1 + cos(theta))")
    angle_force.addGlobalParameter("k_angle", float(params["angle_k_kT"]) * kT)
    offset = 0
    for sequence in sequences:
        backbone = [offset + 2 * m for m in range(len(sequence))]
        for a, b, c in zip(backbone, backbone[1:], backbone[2:]):
            angle_force.addAngle(a, b, c, [])
        offset += 2 * len(sequence)
    angle_force.setUsesPeriodicBoundaryConditions(box is not None)
    system.addForce(angle_force)

    # Pair table: epsilon (kJ/mol) and whether the pair feels the attractive LJ tail.
    n_types = len(BEAD_TYPES)
    epsilon = np.full((n_types, n_types), kT)
    attractive = np.zeros((n_types, n_types))
    for pair, eps_kT in (params.get("epsilon_kT") or {}).items():
        i, j = _type_pair(pair)
        epsilon[i, j] = epsilon[j, i] = float(eps_kT) * kT
    for pair in params.get("attractive_pairs") or []:
        i, j = _type_pair(pair)
        attractive[i, j] = attractive[j, i] = 1.0
    cutoff = float(params["cutoff_sigma"]) * sigma
    shift = 4.0 * ((sigma / cutoff) ** 12 - (sigma / cutoff) ** 6)
    pair_force = mm.CustomNonbondedForce(
        "select(attr, lj - eps*shift, step(r_wca - r)*(lj + eps));"
        "lj = 4*eps*((sigma/r)^12 - (sigma/r)^6);"
        "eps = eps_table(type1, type2); attr = attr_table(type1, type2)")
    pair_force.addGlobalParameter("sigma", sigma)
    pair_force.addGlobalParameter("r_wca", 2 ** (1 / 6) * sigma)
    pair_force.addGlobalParameter("shift", shift)
    pair_force.addTabulatedFunction("eps_table", mm.Discrete2DFunction(n_types, n_types, epsilon.T.ravel().tolist()))
    pair_force.addTabulatedFunction("attr_table", mm.Discrete2DFunction(n_types, n_types,
                                                                         attractive.T.ravel().tolist()))
    pair_force.addPerParticleParameter("type")
    for bead_type in bead_types:
        pair_force.addParticle([float(bead_type)])
    pair_force.setNonbondedMethod(mm.CustomNonbondedForce.CutoffPeriodic if box is not None
                                  else mm.CustomNonbondedForce.CutoffNonPeriodic)
    pair_force.setCutoffDistance(cutoff)
    pair_force.createExclusionsFromBonds([list(b) for b in bonds], 1)  # bonded neighbours only
    if isolated:
        start = 0
        for sequence in sequences:
            chain = list(range(start, start + 2 * len(sequence)))
            pair_force.addInteractionGroup(chain, chain)
            start += 2 * len(sequence)
    system.addForce(pair_force)
    return system


def _type_pair(pair: str) -> tuple[int, int]:
    names = str(pair).replace(" ", "").split("-")
    if len(names) != 2 or not set(names) <= set(BEAD_TYPES):
        raise ValueError(f"bead-type pair must look like 'S1-S1' with types {BEAD_TYPES}, got {pair!r}")
    return BEAD_TYPES.index(names[0]), BEAD_TYPES.index(names[1])


def _grow_chains(lengths: list[int], bond: float, sigma: float, box: float | None,
                 rng: np.random.Generator, min_distance: float = 0.75, tries: int = 64) -> np.ndarray:
    """Self-avoiding random-walk conformations (nm), one backbone + side-chain bead per monomer.

    Every new bead keeps at least ``min_distance * sigma`` from all beads
    placed before it (minimum image when periodic), so that minimisation
    starts from finite forces. Each monomer draws ``tries`` candidate
    placements at once and takes the first that fits; a chain that runs
    into a dead end is regrown. Chains in a box start at random points.
    """
    limit2 = (min_distance * sigma) ** 2
    placed = np.zeros((0, 3))

    def fits(points, others):
        """(tries, 3) candidates -> (tries,) bool: far enough from every bead in ``others``."""
        if len(others) == 0:
            return np.ones(len(points), dtype=bool)
        delta = others[None, :, :] - points[:, None, :]
        if box is not None:
            delta -= box * np.round(delta / box)
        return np.einsum("tij,tij->ti", delta, delta).min(axis=1) > limit2

    def unit_vectors(n):
        v = rng.normal(size=(n, 3))
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    for length in lengths:
        for _attempt in range(200):
            current = np.zeros((0, 3))
            for m in range(length):
                if m == 0:
                    backbones = rng.random((tries, 3)) * box if box is not None else np.zeros((tries, 3))
                else:
                    directions = unit_vectors(tries)
                    if m > 1:  # walk forward: backbone angle above 90 degrees
                        previous = current[-2] - current[-4]
                        dots = directions @ previous
                        directions -= (2 * np.minimum(dots, 0.0) / (previous @ previous))[:, None] * previous
                    backbones = current[-2] + bond * directions
                sides = backbones + bond * unit_vectors(tries)
                others = np.vstack([placed, current])
                ok = fits(backbones, others) & fits(sides, others)
                if m > 0:  # the side chain must also clear its own backbone's predecessor
                    gap = sides - current[-2]
                    ok &= np.einsum("ij,ij->i", gap, gap) > limit2
                choice = np.flatnonzero(ok)
                if len(choice) == 0:
                    break  # dead end: regrow this chain
                current = np.vstack([current, backbones[choice[0]], sides[choice[0]]])
            if len(current) == 2 * length:
                placed = np.vstack([placed, current])
                break
        else:
            raise ValueError("could not place the polymer chains without overlaps; lower density_per_nm3")
    return placed
