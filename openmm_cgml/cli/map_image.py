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


def run(args) -> int:
    from openmm_cgml.mapping import Mapping
    from openmm_cgml.mapping_image import draw_mapping
    from openmm_cgml.structure import load_structure

    topology, positions, masses, atom_types, box = load_structure(args.structure)
    method, params = mapping_options_from_args(args)
    mapping = Mapping.build(method, topology, masses, atom_types=atom_types, **params)
    out = draw_mapping(mapping, positions, args.out, box=box)
    if args.save_mapping:
        Path(args.save_mapping).write_text(mapping.to_json())
    print(f"{mapping.method} mapping: {mapping.n_atoms} atoms -> {mapping.n_beads} beads; wrote {out}")
    return 0
