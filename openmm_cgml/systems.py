"""Ready reference systems, each described by a small YAML file in ``systems/``.

``load(name_or_yaml, **overrides)`` returns a :class:`ReferenceSystem`
(topology, OpenMM System, positions, thermostat settings, per-atom types and
charges). A YAML file names a *builder*:

- ``pdb``: a PDB plus force-field XML files (``forcefield: [...]``), or a PDB
  plus a serialized OpenMM System (``system_xml: file.xml``). This is how a
  user adds a system without code.
- ``peptide``: a peptide built from its ``sequence`` with PeptideBuilder,
  completed (terminal atoms, hydrogens at pH 7) by pdbfixer.
- ``polymer-chain``: one bead-spring heteropolymer in implicit solvent after
  Webb et al. (Sci. Adv. 2020): each monomer is a backbone bead (B1 or B2)
  with a side-chain bead (S1 or S2); monomer type A = (B1, S1) is solvophobic,
  type B = (B2, S2) solvophilic. The sequence is drawn from ``sequence_seed``.
- ``polymer-melt``: ``n_chains`` such chains at melt density in a periodic box.
- ``polymer-chains``: the given ``sequences`` as isolated chains in one
  System (infinite dilution: each chain interacts only with itself, through
  CustomNonbondedForce interaction groups). One Context then integrates many
  independent reference chains at once, about 10x the chain throughput of one
  Context per chain on a CPU for 16-bead chains.

YAML keys carry their unit in the name (``temperature_K``,
``timestep_ps``, ``friction_per_ps``, ``sigma_nm`` ...). Overrides passed to
:func:`load` may be plain numbers in that unit or ``openmm.unit``
quantities. File paths in a YAML are relative to the YAML's folder.
"""
from __future__ import annotations

import copy
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openmm as mm
import openmm.app as app
import openmm.unit as u
import yaml

from openmm_cgml.polymers import BEAD_TYPES, build_polymer
from openmm_cgml.units import AMU, KELVIN, NM, PS, is_integer, is_number, strip, strip_array

__all__ = ["ReferenceSystem", "load", "rebuild", "builder_keys", "available", "descriptions", "SYSTEMS_DIR",
           "BEAD_TYPES"]

# Shipped YAML files live in the repository's systems/ folder (next to the package).
def _find_systems_dir() -> Path:
    """The ready systems: ``systems/`` beside the package (a source checkout or
    editable install), else the copy a wheel installs under ``<prefix>/share``."""
    import sys

    beside = Path(__file__).resolve().parent.parent / "systems"
    installed = Path(sys.prefix) / "share" / "openmm-cgml" / "systems"
    return beside if beside.is_dir() or not installed.is_dir() else installed


SYSTEMS_DIR = _find_systems_dir()

_UNIT_SUFFIXES = {"_K": KELVIN, "_ps": PS, "_per_ps": PS**-1, "_nm": NM, "_amu": AMU,
                  "_kj_per_mol_nm2": u.kilojoule_per_mole / u.nanometer**2,
                  "_per_nm3": NM**-3}
_COMMON_KEYS = {"name", "description", "builder", "temperature_K", "friction_per_ps", "timestep_ps", "generate"}
_BUILDER_KEYS = {
    "pdb": {"pdb", "forcefield", "system_xml", "nonbonded_method", "cutoff_nm", "constraints", "rigid_water"},
    "peptide": {"sequence", "forcefield", "nonbonded_method", "cutoff_nm", "constraints", "ph"},
    "polymer-chain": {"length", "sequence", "sequence_seed", "conformation_seed", "fraction_solvophobic",
                      "sigma_nm", "bond_length_nm", "bond_k_kj_per_mol_nm2", "angle_k_kT", "bead_mass_amu",
                      "epsilon_kT", "attractive_pairs", "cutoff_sigma"},
}
_BUILDER_KEYS["polymer-melt"] = _BUILDER_KEYS["polymer-chain"] - {"sequence"} | {"n_chains", "density_per_nm3"}
_BUILDER_KEYS["polymer-chains"] = (_BUILDER_KEYS["polymer-chain"] - {"sequence", "sequence_seed", "length",
                                                                    "fraction_solvophobic"} | {"sequences"})
_GENERATE_KEYS = {"frames", "stride", "equilibration_steps"}


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


# The kinds of value a YAML key takes: what an error message calls it, and the check. Unit-suffixed keys
# (temperature_K, ...) are checked by ``strip``. A list where a number belongs is refused here, naming
# the key, rather than failing somewhere inside a builder.
_KINDS = {
    # the name becomes output file names: nothing that leaves the output folder or hides a file
    "name": ("a plain file name (no folders, not starting with '.')",
             lambda v: isinstance(v, str) and v.strip() == v != "" and not v.startswith(".")
             and not set(v) & {"/", "\\", "\0"}),
    "string": ("a string", lambda v: isinstance(v, str)),
    "optional string": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "strings": ("a list of strings", _strings),
    "string or strings": ("a string or a list of strings", lambda v: isinstance(v, str) or _strings(v)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "integer": ("an integer", is_integer),
    "number": ("a number", is_number),
    "pair numbers": ("a mapping of bead pairs to numbers",
                     lambda v: v is None or (isinstance(v, dict) and all(map(is_number, v.values())))),
    "generate": ("a mapping of frames, stride and equilibration_steps to integers",
                 lambda v: v is None or (isinstance(v, dict) and set(v) <= _GENERATE_KEYS
                                         and all(map(is_integer, v.values())))),
}
_KEY_KINDS = {
    "name": "name", "description": "string", "builder": "string", "pdb": "string", "system_xml": "string",
    "nonbonded_method": "string", "constraints": "optional string", "sequence": "optional string",
    "forcefield": "string or strings", "sequences": "strings", "attractive_pairs": "strings",
    "rigid_water": "bool", "length": "integer", "sequence_seed": "integer", "conformation_seed": "integer",
    "n_chains": "integer", "fraction_solvophobic": "number", "angle_k_kT": "number", "cutoff_sigma": "number",
    "ph": "number", "epsilon_kT": "pair numbers", "generate": "generate",
}


@dataclass
class ReferenceSystem:
    """A ready-to-simulate fine-grained system.

    ``positions`` (nm), ``temperature`` (K), ``friction`` (1/ps) and
    ``timestep`` (ps) are ``openmm.unit`` quantities. ``atom_types`` is the
    atomic number for atomistic systems and the bead type 0..3
    (B1, B2, S1, S2) for polymers; ``charges`` (e) come from the
    NonbondedForce (zeros where there is none). ``params`` is the YAML
    content with the overrides applied.
    """

    name: str
    topology: app.Topology
    system: mm.System
    positions: u.Quantity
    temperature: u.Quantity
    friction: u.Quantity
    timestep: u.Quantity
    atom_types: np.ndarray
    charges: np.ndarray
    params: dict = field(default_factory=dict)

    @property
    def n_atoms(self) -> int:
        return self.system.getNumParticles()

    @property
    def masses(self) -> np.ndarray:
        """Particle masses from the System, amu."""
        return np.array([self.system.getParticleMass(i).value_in_unit(AMU) for i in range(self.n_atoms)])

    @property
    def is_periodic(self) -> bool:
        return self.system.usesPeriodicBoundaryConditions()

    def integrator(self, seed: int = 1) -> mm.LangevinMiddleIntegrator:
        """A LangevinMiddleIntegrator at this system's temperature, friction and time step."""
        integrator = mm.LangevinMiddleIntegrator(self.temperature, self.friction, self.timestep)
        integrator.setRandomNumberSeed(int(seed))
        return integrator


def available() -> list[str]:
    """Names of the shipped reference systems (the YAML files in ``systems/``)."""
    return sorted(path.stem for path in SYSTEMS_DIR.glob("*.yaml"))


def descriptions() -> dict[str, str]:
    """The shipped reference systems: name -> the one-line ``description`` of its YAML file."""
    return {name: _read_yaml(SYSTEMS_DIR / f"{name}.yaml").get("description", "") for name in available()}


def load(name_or_path, **overrides) -> ReferenceSystem:
    """Build a reference system from its registered name or a path to a YAML file.

    ``overrides`` replace top-level YAML keys, e.g.
    ``load("polymer-chain", length=20, sequence_seed=3)``. Unknown names,
    unknown keys and bad values raise ``ValueError``; missing files raise
    ``FileNotFoundError``.
    """
    yaml_path = _resolve_yaml(name_or_path)
    params = _read_yaml(yaml_path)
    params = _apply_overrides(params, overrides, yaml_path)
    builder = params["builder"]
    base = yaml_path.parent
    if builder == "pdb":
        topology, system, positions = _build_from_pdb(params, base)
    elif builder == "peptide":
        topology, system, positions = _build_peptide(params, base)
    else:
        topology, system, positions = build_polymer(params)
    positions = strip_array(positions, NM, f"{params['name']} positions") * NM  # (n, 3) array, nm
    atom_types = _atom_types(topology, params)
    charges = _charges(system)
    if topology.getNumAtoms() != system.getNumParticles():
        raise ValueError(f"{yaml_path}: the topology has {topology.getNumAtoms()} atoms but the System has "
                         f"{system.getNumParticles()} particles")
    return ReferenceSystem(
        name=params["name"], topology=topology, system=system, positions=positions,
        temperature=params["temperature_K"] * KELVIN, friction=params["friction_per_ps"] / PS,
        timestep=params["timestep_ps"] * PS, atom_types=atom_types, charges=charges, params=params)


def builder_keys(builder: str) -> frozenset:
    """The YAML keys a builder takes (``pdb``, ``peptide``, ``polymer-chain``, ``polymer-chains``, ...),
    besides the keys every system has (name, temperature, friction, time step, ...)."""
    if builder not in _BUILDER_KEYS:
        raise ValueError(f"unknown builder {builder!r}; one of {sorted(_BUILDER_KEYS)}")
    return frozenset(_BUILDER_KEYS[builder])


def rebuild(name: str, params: dict) -> ReferenceSystem:
    """The reference system a trajectory recorded: registered ``name`` with the recorded ``params``
    (``cgml_system`` and ``cgml_params`` of a ``cgml generate`` file), keys its builder takes only.

    ``ValueError`` if ``name`` is not a registered system (a user YAML: load it by path instead).
    """
    if name not in available():
        raise ValueError(f"{name!r} is not a registered reference system: give its YAML path")
    default = load(name).params
    allowed = (_COMMON_KEYS | _BUILDER_KEYS[default["builder"]]) - {"name", "builder", "description", "generate"}
    return load(name, **{key: value for key, value in params.items()
                         if key in allowed and default.get(key) != value})


# ---------------------------------------------------------------- YAML handling
def _resolve_yaml(name_or_path) -> Path:
    text = os.fspath(name_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or os.sep in text or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"system file {path} does not exist")
        return path.resolve()
    registered = SYSTEMS_DIR / f"{text}.yaml"
    if not registered.is_file():
        raise ValueError(f"unknown system {text!r}; available: {', '.join(available())} "
                         f"(or give the path to a YAML file)")
    return registered


def _read_yaml(path: Path) -> dict:
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(params, dict):
        raise ValueError(f"{path} must contain a mapping of keys to values")
    params.setdefault("name", path.stem)
    if "builder" not in params:
        params["builder"] = "pdb"
    if params["builder"] not in _BUILDER_KEYS:
        raise ValueError(f"{path}: unknown builder {params['builder']!r}; one of {sorted(_BUILDER_KEYS)}")
    _check_keys(params, params.keys(), path)
    for key in ("temperature_K", "friction_per_ps", "timestep_ps"):
        if key not in params:
            raise ValueError(f"{path} must set {key}")
    return params


def _check_keys(params: dict, keys, where) -> None:
    allowed = _COMMON_KEYS | _BUILDER_KEYS[params["builder"]]
    unknown = sorted(set(keys) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown parameter(s) {', '.join(unknown)} for a {params['builder']!r} system; "
                         f"allowed: {', '.join(sorted(allowed))}")


def _apply_overrides(params: dict, overrides: dict, where) -> dict:
    params = copy.deepcopy(params)
    _check_keys(params, overrides.keys(), where)
    for key, value in overrides.items():
        if key == "builder":
            raise ValueError("the builder of a system cannot be overridden")
        unit = next((unit for suffix, unit in _UNIT_SUFFIXES.items() if key.endswith(suffix)), None)
        if unit is not None and value is not None:
            value = strip(value, unit, key)
        elif u.is_quantity(value):
            raise ValueError(f"{key} takes no units, got {value}")
        params[key] = value
    for key in params:
        if any(key.endswith(suffix) for suffix in _UNIT_SUFFIXES) and params[key] is not None:
            try:
                params[key] = strip(params[key], _UNIT_SUFFIXES[next(s for s in _UNIT_SUFFIXES if key.endswith(s))],
                                    key)
            except (ValueError, TypeError) as error:
                raise ValueError(f"{where}: {error}") from None
    for key in ("temperature_K", "friction_per_ps", "timestep_ps"):
        if params[key] <= 0:
            raise ValueError(f"{where}: {key} must be positive, got {params[key]}")
    for key, value in params.items():
        what, check = _KINDS[_KEY_KINDS[key]] if key in _KEY_KINDS else (None, None)
        if check is not None and not check(value):
            raise ValueError(f"{where}: {key} must be {what}, got {str(repr(value))[:80]}")
    return params


# ---------------------------------------------------------------- atomistic builders
def _data_file(name: str, base: Path, what: str) -> str:
    """A file named in a YAML: relative to the YAML's folder, else (force fields) OpenMM's data."""
    candidate = (base / name) if not Path(name).is_absolute() else Path(name)
    if candidate.is_file():
        return str(candidate)
    if what == "force field":
        return name  # resolved against OpenMM's data folder by ForceField
    raise FileNotFoundError(f"{what} file {candidate} does not exist")


def _read_pdb(path: str) -> app.PDBFile:
    try:
        pdb = app.PDBFile(path)
    except Exception as error:  # OpenMM raises assorted errors on malformed PDB text
        raise ValueError(f"cannot read PDB file {path}: {error}") from None
    if pdb.topology.getNumAtoms() == 0:
        raise ValueError(f"PDB file {path} contains no atoms")
    positions = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(NM))
    if not np.all(np.isfinite(positions)):
        raise ValueError(f"PDB file {path} has non-finite coordinates")
    return pdb


def _force_field(names, base: Path, where) -> app.ForceField:
    if not names:
        raise ValueError(f"{where}: 'forcefield' must list at least one force-field XML file")
    files = [_data_file(name, base, "force field") for name in ([names] if isinstance(names, str) else names)]
    try:
        return app.ForceField(*files)
    except (ValueError, OSError, FileNotFoundError) as error:
        raise FileNotFoundError(f"{where}: cannot load force field {files}: {error}") from None


def _create_system(forcefield: app.ForceField, topology: app.Topology, params: dict, where) -> mm.System:
    methods = {"NoCutoff": app.NoCutoff, "CutoffNonPeriodic": app.CutoffNonPeriodic,
               "CutoffPeriodic": app.CutoffPeriodic, "PME": app.PME, "Ewald": app.Ewald}
    constraints = {None: None, "None": None, "HBonds": app.HBonds, "AllBonds": app.AllBonds,
                   "HAngles": app.HAngles}
    method = params.get("nonbonded_method", "NoCutoff")
    constraint = params.get("constraints", "HBonds")
    if method not in methods:
        raise ValueError(f"{where}: nonbonded_method must be one of {sorted(methods)}, got {method!r}")
    if constraint not in constraints:
        raise ValueError(f"{where}: constraints must be one of HBonds, AllBonds, HAngles, None; got {constraint!r}")
    options = {"nonbondedMethod": methods[method], "constraints": constraints[constraint],
               "rigidWater": bool(params.get("rigid_water", True))}
    if method != "NoCutoff":
        options["nonbondedCutoff"] = params.get("cutoff_nm", 1.0) * NM
    try:
        return forcefield.createSystem(topology, **options)
    except ValueError as error:
        raise ValueError(f"{where}: the force field does not fit the structure: {error}") from None


def _build_from_pdb(params: dict, base: Path):
    where = params["name"]
    if "pdb" not in params:
        raise ValueError(f"{where}: a 'pdb' system needs a 'pdb' file")
    pdb = _read_pdb(_data_file(params["pdb"], base, "PDB"))
    topology, positions = pdb.topology, pdb.positions
    if params.get("system_xml"):
        xml_path = _data_file(params["system_xml"], base, "System XML")
        try:
            system = mm.XmlSerializer.deserialize(Path(xml_path).read_text())
        except Exception as error:
            raise ValueError(f"cannot read serialized System {xml_path}: {error}") from None
        if not isinstance(system, mm.System):
            raise ValueError(f"{xml_path} does not contain a serialized openmm.System")
        if system.getNumParticles() != topology.getNumAtoms():
            raise ValueError(f"{xml_path} has {system.getNumParticles()} particles but {params['pdb']} has "
                             f"{topology.getNumAtoms()} atoms")
    elif params.get("forcefield"):
        system = _create_system(_force_field(params["forcefield"], base, where), topology, params, where)
    else:
        raise ValueError(f"{where}: give either 'forcefield' (XML files) or 'system_xml' (a serialized System)")
    return topology, system, positions


def _build_peptide(params: dict, base: Path):
    """Build an extended peptide from its one-letter sequence; pdbfixer adds terminal atoms and hydrogens."""
    import PeptideBuilder
    from Bio.PDB import PDBIO
    from pdbfixer import PDBFixer

    sequence = str(params.get("sequence", "")).upper()
    valid = set("ACDEFGHIKLMNPQRSTVWY")
    if not sequence or set(sequence) - valid:
        raise ValueError(f"{params['name']}: sequence must be one-letter amino-acid codes, got {sequence!r}")
    structure = PeptideBuilder.make_extended_structure(sequence)
    text = io.StringIO()
    writer = PDBIO()
    writer.set_structure(structure)
    writer.save(text)
    fixer = PDBFixer(pdbfile=io.StringIO(text.getvalue()))
    fixer.findMissingResidues()
    fixer.findMissingAtoms()
    fixer.addMissingAtoms(seed=0)
    fixer.addMissingHydrogens(float(params.get("ph", 7.0)))
    forcefield = _force_field(params.get("forcefield", ["amber14-all.xml", "implicit/gbn2.xml"]), base,
                              params["name"])
    system = _create_system(forcefield, fixer.topology, params, params["name"])
    return fixer.topology, system, fixer.positions


def _atom_types(topology: app.Topology, params: dict) -> np.ndarray:
    if params["builder"].startswith("polymer"):
        return np.array([BEAD_TYPES.index(atom.name) for atom in topology.atoms()], dtype=np.int64)
    return np.array([atom.element.atomic_number if atom.element is not None else 0
                     for atom in topology.atoms()], dtype=np.int64)


def _charges(system: mm.System) -> np.ndarray:
    charges = np.zeros(system.getNumParticles())
    for force in system.getForces():
        if isinstance(force, mm.NonbondedForce):
            for i in range(force.getNumParticles()):
                charges[i] = force.getParticleParameters(i)[0].value_in_unit(u.elementary_charge)
    return charges
