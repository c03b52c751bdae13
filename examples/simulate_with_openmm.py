"""Run an exported openmm-cgml model with plain OpenMM: Simulation, reporters, checkpoints.

    python examples/simulate_with_openmm.py model.safetensors start.pdb --steps 5000

``model.safetensors`` comes from ``cgml export``; ``start.pdb`` is a fine-grained
(all-atom) structure of the molecule the model was trained on, or, for a
transferable model (trained on several molecules), of a new molecule: its
mapping rule is re-made for it. ``start`` may also be a fine trajectory
(.h5) or a system YAML, which carry atom types (polymer bead types need
them); ``--mapping FILE`` gives a mapping explicitly. The script is
ordinary OpenMM: the only openmm-cgml pieces are ``load``,
``coarse_grained_system`` and ``CGMLIntegrator``.

Without a model, ``--demo`` exports an *untrained* propagator for alanine
dipeptide, to show the mechanics (its trajectory is meaningless, and it soon
drifts into a bead collision, which stops the run cleanly).
"""
import argparse
import sys
import tempfile

import openmm
import openmm.app as app
import openmm.unit as unit
import torch  # noqa: F401 (before openmm, as everywhere in openmm-cgml)

import openmm_cgml


def demo_model(directory):
    """An untrained propagator for alanine dipeptide, exported and loaded (mechanics only)."""
    from openmm_cgml import systems
    from openmm_cgml.mapping import Mapping
    from openmm_cgml.model.propagator import CGPropagator
    from openmm_cgml.model_file import export_model

    reference = systems.load("alanine-dipeptide")
    mapping = Mapping.metis(reference.topology, reference.masses, atoms_per_bead=4, atom_types=reference.atom_types)
    module = CGPropagator.from_mapping(mapping, model_dt_ps=2.0, md_steps_per_model_step=1000,
                                       md_timestep_ps=0.002, temperature_K=300.0,
                                       accel_std_nm=1e-4, velocity_std_nm=1e-3)  # untrained: tiny moves
    path = export_model(module, f"{directory}/demo.safetensors", {"mapping": mapping})
    pdb = f"{directory}/alanine-dipeptide.pdb"
    with open(pdb, "w") as handle:
        app.PDBFile.writeFile(reference.topology, reference.positions, handle)
    return str(path), pdb


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="exported model file")
    parser.add_argument("pdb", nargs="?", help="fine-grained start structure")
    parser.add_argument("--steps", type=int, default=1000, help="model steps to run")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--platform", default="CPU")
    parser.add_argument("--out", default="cg_traj.dcd")
    parser.add_argument("--mapping", default=None, help="mapping file to use instead of the model's own")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for the model (default 1)")
    parser.add_argument("--demo", action="store_true", help="use an untrained alanine-dipeptide model")
    args = parser.parse_args()
    # the model runs with torch's global thread count; CGMLIntegrator does not change it
    torch.set_num_threads(args.threads)
    if args.demo:
        args.model, args.pdb = demo_model(tempfile.mkdtemp())
    elif not (args.model and args.pdb):
        parser.error("give MODEL and PDB, or --demo")

    model = openmm_cgml.load(args.model)
    print(model, file=sys.stderr)
    # bead topology, bead system (masses, no forces) and bead positions from the all-atom structure
    cg = openmm_cgml.coarse_grained_system(model, args.pdb, replicas=args.replicas, mapping=args.mapping)
    print(f"{cg.mapping.n_atoms} atoms -> {cg.mapping.n_beads} beads ({cg.mapping.method} mapping)", file=sys.stderr)
    # the propagator samples the temperature it was trained at: ask for that one
    integrator = openmm_cgml.CGMLIntegrator(model, temperature=model.temperature, seed=2024)
    simulation = app.Simulation(cg.topology, cg.system, integrator,
                                openmm.Platform.getPlatformByName(args.platform))
    simulation.context.setPositions(cg.positions)

    # Starting from one structure, the model's k-frame history begins as k copies
    # of it (beads at rest): run through that warm-up before recording.
    simulation.step(integrator.getWarmupSteps())

    # getStepSize() is the model time step, so reporters print true simulated time
    print(f"one model step = {integrator.getStepSize()} "
          f"({model.md_steps_per_model_step} MD steps of {model.md_timestep})", file=sys.stderr)
    interval = max(1, args.steps // 100)
    simulation.reporters.append(app.DCDReporter(args.out, interval))
    simulation.reporters.append(app.StateDataReporter(sys.stdout, interval * 10, step=True, time=True,
                                                      speed=True, progress=True,
                                                      totalSteps=simulation.currentStep + args.steps))
    simulation.reporters.append(app.CheckpointReporter("cg_run.chk", interval * 10))
    try:
        simulation.step(args.steps)
    except openmm_cgml.openmm.UnstableRolloutError as error:
        # NaN or two beads closer than 0.1 nm: the Context keeps the last good state and
        # everything reported so far stays valid
        print(f"stopped early: {error}", file=sys.stderr)
    with open(args.out.rsplit(".", 1)[0] + "_beads.pdb", "w") as handle:  # topology for viewing the DCD
        app.PDBFile.writeFile(cg.topology, simulation.context.getState(getPositions=True).getPositions(), handle)
    ps = simulation.context.getState().getTime().value_in_unit(unit.picosecond)
    print(f"done: {simulation.currentStep} model steps, {ps / 1000:.3f} ns of simulated time", file=sys.stderr)


if __name__ == "__main__":
    main()
