"""Command-line arguments shared by several ``cgml`` commands, and their parsing into plain values."""
from __future__ import annotations

import argparse

import yaml

from openmm_cgml.bond_graph import check_atoms_per_bead, check_n_beads
from openmm_cgml.mapping import mapping_options

__all__ = ["add_mapping_arguments", "mapping_options_from_args", "add_param_argument", "parse_overrides"]


def add_mapping_arguments(parser: argparse.ArgumentParser) -> None:
    """The mapping options shared by ``cgml map-image``, ``cgml coarse-grain`` and ``cgml evaluate``."""
    parser.add_argument("--mapping", default="metis",
                        help="metis (graph partitioning), residue (one bead per residue), backbone (beads on "
                             "N, CA, C of amino acids: exact phi/psi) or a mapping file (JSON/YAML, see "
                             "docs/coarse_graining.md); default metis")
    parser.add_argument("--atoms-per-bead", type=float, default=None,
                        help="METIS resolution: atoms per bead (default 4 unless --n-beads is given)")
    parser.add_argument("--n-beads", type=int, default=None, help="METIS resolution: total number of beads")
    parser.add_argument("--center", choices=("com", "ca"), default="com",
                        help="residue mapping: bead at the centre of mass or at the alpha carbon")
    parser.add_argument("--backbone-extra", default="", metavar="CB[,O]",
                        help="backbone mapping: further beads per amino acid, CB, O or CB,O (CB makes the alpha "
                             "carbon's handedness visible on the beads); default none")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed: METIS partitioning (same seed, same mapping) and, for coarse-grain, "
                             "the split")


def mapping_options_from_args(args: argparse.Namespace) -> tuple[str, dict]:
    """``(method, params)`` for ``Mapping.build`` from the arguments :func:`add_mapping_arguments` added.

    Raises
    ------
    ValueError
        For an ``--atoms-per-bead`` that is not a finite number >= 1 (inf would silently make one
        bead per molecule) or an ``--n-beads`` below 1: the checks of
        :func:`~openmm_cgml.bond_graph.metis_beads`, named by the option.
    """
    if args.atoms_per_bead is not None:
        check_atoms_per_bead(args.atoms_per_bead, name="--atoms-per-bead")
    if args.n_beads is not None:
        check_n_beads(args.n_beads, name="--n-beads")   # the upper bound needs the molecule: Mapping.build
    extra = [name.strip() for name in args.backbone_extra.split(",") if name.strip()]
    return mapping_options(args.mapping, args.atoms_per_bead, args.n_beads, args.center, args.seed, extra)


def add_param_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--param/-p KEY=VALUE`` (repeatable): overrides of reference-system YAML keys, see :func:`parse_overrides`."""
    parser.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE", help=help_text)


def parse_overrides(items: list[str]) -> dict:
    """``["length=30", "sequence_seed=2"]`` -> ``{"length": 30, "sequence_seed": 2}`` (values parsed as YAML).

    Parameters
    ----------
    items : list of str
        ``KEY=VALUE`` strings.

    Returns
    -------
    dict
        Keyword arguments for :func:`openmm_cgml.systems.load`.
    """
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"parameter overrides look like KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides
