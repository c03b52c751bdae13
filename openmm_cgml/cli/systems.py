"""``cgml systems``: list the ready reference systems, or describe one.

    cgml systems
    cgml systems polymer-chain -p length=30
"""
from __future__ import annotations

from openmm_cgml.cli.options import add_param_argument, parse_overrides

__all__ = ["configure_parser", "run"]


def configure_parser(parser) -> None:
    parser.add_argument("name", nargs="?", help="show one system (name or YAML path) in detail")
    add_param_argument(parser, "override a YAML key (repeatable), e.g. -p length=30")


def run(args) -> int:
    from openmm_cgml import systems

    if not args.name:
        for name, description in systems.descriptions().items():
            print(f"{name:20s} {description}")
        return 0
    system = systems.load(args.name, **parse_overrides(args.param))
    masses = system.masses
    print(f"name          {system.name}")
    print(f"particles     {system.n_atoms} (total mass {masses.sum():.1f} amu)")
    print(f"periodic      {system.is_periodic}")
    print(f"temperature   {system.temperature}")
    print(f"friction      {system.friction}")
    print(f"time step     {system.timestep}")
    for sequence in system.params.get("sequences", []):
        print(f"sequence      {sequence}")
    print(f"forces        {', '.join(f.__class__.__name__ for f in system.system.getForces())}")
    return 0
