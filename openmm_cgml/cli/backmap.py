"""``cgml backmap``: bead trajectories back to atoms (fragments from the training data, restrained minimisation).

    cgml backmap model.safetensors --beads traj.dcd --top traj_beads.pdb \\
        --reference runs/ala2/alanine-dipeptide-r000.h5 --out atoms.dcd

The mapping is the model's (as ``cgml simulate`` used it), made for the
molecule of the reference trajectories; a bead file with R copies of the
molecule (``cgml simulate --replicas R``) gives R copies in the output. The
format follows the suffix of ``--out`` (.dcd, .xtc, .pdb, .h5); .dcd and .xtc
also get ``<out stem>.pdb`` (the topology, first frame). Files are written
whole or not at all. The last line printed is a JSON summary: frames, the
largest bead deviation (nm), energies, stereocentres kept and clashes.
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["configure_parser", "run"]

_WRITERS = {".dcd": "save_dcd", ".xtc": "save_xtc", ".pdb": "save_pdb", ".h5": "save_hdf5"}


def configure_parser(parser) -> None:
    parser.add_argument("model", help="exported model file (from `cgml export`) or a pretrained name")
    parser.add_argument("--trust-model", action="store_true",
                        help="allow a TorchScript (.pt) model that this package does not ship (it can run code)")
    parser.add_argument("--beads", required=True, help="bead trajectory (.dcd, .xtc, .pdb, ...) from `cgml simulate`")
    parser.add_argument("--top", required=True, help="bead topology PDB (`cgml simulate` writes <out>_beads.pdb)")
    parser.add_argument("--reference", nargs="+", required=True,
                        help="fine trajectories of the molecule (`cgml generate` HDF5, the training data): "
                             "the fragment library and the force field")
    parser.add_argument("--mapping", default=None, help="mapping file to use instead of the model's")
    parser.add_argument("--system", default=None,
                        help="reference system name/YAML of the force field (default: the one the references "
                             "record)")
    parser.add_argument("--library-frames", type=int, default=1000, help="reference frames in the library")
    parser.add_argument("--no-minimize", action="store_true", help="place fragments only")
    parser.add_argument("--out", required=True, help="atom trajectory to write: .dcd, .xtc, .pdb or .h5")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def _outputs(args) -> list[Path]:
    """The files this run writes, refused before any work if they exist (without --overwrite) or cannot be."""
    out = Path(args.out)
    if out.suffix.lower() not in _WRITERS:
        raise ValueError(f"--out {out}: give a .dcd, .xtc, .pdb or .h5 file")
    paths = [out] + ([out.with_suffix(".pdb")] if out.suffix.lower() in (".dcd", ".xtc") else [])
    for path in paths:
        if path.is_dir():
            raise IsADirectoryError(f"--out {path} is a directory; give a file name")
        if not path.parent.is_dir():
            raise NotADirectoryError(f"--out {path}: the folder {path.parent} does not exist")
        if path.exists() and not args.overwrite:
            raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")
    return paths


def _bead_frames(args, n_beads: int):
    """Bead positions (frames, copies, n_beads, 3) nm from --beads/--top."""
    import mdtraj
    import numpy as np

    for option, name in (("--beads", args.beads), ("--top", args.top)):
        if not Path(name).is_file():
            raise FileNotFoundError(f"{option} {name} does not exist or is not a file")
    try:
        beads = mdtraj.load(args.beads, top=args.top)
    except Exception as error:  # mdtraj raises many kinds on a damaged file
        raise ValueError(f"--beads {args.beads}: cannot read it with the topology {args.top} ({error})") from None
    if beads.n_atoms % n_beads:
        raise ValueError(f"--beads {args.beads} has {beads.n_atoms} beads, not a whole number of molecules of "
                         f"{n_beads} beads")
    xyz = np.asarray(beads.xyz, dtype=np.float64)
    if not np.isfinite(xyz).all():
        raise ValueError(f"--beads {args.beads} contains NaN or infinite coordinates")
    return xyz.reshape(beads.n_frames, beads.n_atoms // n_beads, n_beads, 3)


def run(args) -> int:
    import mdtraj
    import numpy as np

    from openmm_cgml.backmap import Backmapper
    from openmm_cgml.evaluation.structures import backmap_summary
    from openmm_cgml.io import atomic_path
    from openmm_cgml.model_file import load
    from openmm_cgml.openmm.bead_system import molecule_mapping
    from openmm_cgml.trajectory import FineTrajectory

    paths = _outputs(args)
    model = load(args.model, trusted=args.trust_model)
    with FineTrajectory(args.reference[0]) as first:
        topology, atom_types = first.topology, first.atom_types
        reference = np.asarray(first.positions[:])   # the handedness each stereocentre has in most frames
    mapping = molecule_mapping(model, topology, atom_types=atom_types, mapping=args.mapping)
    backmapper = Backmapper.from_references(mapping, args.reference, args.library_frames, system=args.system)
    frames = _bead_frames(args, mapping.n_beads)
    n_frames, copies = frames.shape[:2]
    result = backmapper.backmap(frames.reshape(-1, mapping.n_beads, 3), minimize=not args.no_minimize)
    atoms = result.positions._value.reshape(n_frames, copies, mapping.n_atoms, 3)

    one = mdtraj.Topology.from_openmm(topology)
    joined = one
    for _ in range(copies - 1):
        joined = joined.join(one)
    trajectory = mdtraj.Trajectory(atoms.reshape(n_frames, copies * mapping.n_atoms, 3).astype(np.float32), joined)
    with atomic_path(paths[0]) as temporary:
        getattr(trajectory, _WRITERS[paths[0].suffix.lower()])(str(temporary), force_overwrite=True)
    if len(paths) > 1:
        with atomic_path(paths[1]) as temporary:
            trajectory[0].save_pdb(str(temporary), force_overwrite=True)
    summary = backmap_summary(result, topology, reference)
    summary.update(frames=int(n_frames), copies=int(copies), atoms=int(copies * mapping.n_atoms),
                   library_frames=backmapper.library_frames, minimized=result.potential_energy is not None,
                   out=[str(path) for path in paths])
    print(json.dumps(summary))
    return 0
