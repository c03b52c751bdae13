"""``cgml map-image``: draw a mapping, beads coloured on the molecule, as a PNG.

    cgml map-image alanine-dipeptide --mapping residue --out map.png --save-mapping map.json
"""
from __future__ import annotations

from pathlib import Path

from openmm_cgml.cli.options import add_mapping_arguments, mapping_options_from_args

__all__ = ["configure_parser", "run"]


def configure_parser(parser) -> None:
    parser.add_argument("structure", help="a PDB/PDBx file, a fine trajectory (.h5) or a reference system name/YAML")
    add_mapping_arguments(parser)
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--save-mapping", default=None, help="also write the mapping as JSON to this file")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --out / --save-mapping files")


def _check_outputs(args) -> None:
    """Refuse, before any work, to replace existing outputs without ``--overwrite`` or to write into a non-folder."""
    outputs = [("--out", args.out)] + ([("--save-mapping", args.save_mapping)] if args.save_mapping else [])
    for option, name in outputs:
        path = Path(name)
        if path.is_dir():
            raise IsADirectoryError(f"{option} {path} is a directory; give a file name")
        if option == "--out" and path.suffix.lower() != ".png":
            raise ValueError(f"--out {path}: the image is a PNG; give a name ending in .png")
        if path.exists() and not args.overwrite:
            raise FileExistsError(f"{option} {path} already exists; pass --overwrite to replace it")
        if path.parent.exists() and not path.parent.is_dir():
            raise NotADirectoryError(f"{option} {path}: {path.parent} is not a directory")
    if args.save_mapping and Path(args.save_mapping).resolve() == Path(args.out).resolve():
        raise ValueError(f"--out and --save-mapping are the same file {args.out}")


def run(args) -> int:
    from openmm_cgml.io import write_atomic
    from openmm_cgml.mapping import Mapping
    from openmm_cgml.mapping_image import draw_mapping
    from openmm_cgml.structure import load_structure

    _check_outputs(args)
    topology, positions, masses, atom_types, box = load_structure(args.structure)   # refuses folders and NaN
    method, params = mapping_options_from_args(args)
    mapping = Mapping.build(method, topology, masses, atom_types=atom_types, **params)
    out = draw_mapping(mapping, positions, args.out, box=box)
    if args.save_mapping:
        Path(args.save_mapping).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.save_mapping, mapping.to_json())
    print(f"{mapping.method} mapping: {mapping.n_atoms} atoms -> {mapping.n_beads} beads; wrote {out}")
    return 0
