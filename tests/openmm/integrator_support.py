"""What the CGMLIntegrator test modules share: the scripted damped-walk model, a tiny chain molecule, reading
positions, and a reporter that asks for state every step."""
import numpy as np
import openmm.app as app
import openmm.unit as u
import torch

from openmm_cgml.model_file import CGModel


def positions_of(simulation):
    return simulation.context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)


class EveryStepReporter:
    """A reporter that calls getState on every step (as a nosy user would)."""

    def __init__(self):
        self.frames = []

    def describeNextReport(self, simulation):
        return {"steps": 1, "include": ["positions", "velocities"]}

    def report(self, simulation, state):
        self.frames.append(state.getPositions(asNumpy=True).value_in_unit(u.nanometer))
        simulation.context.getState(getPositions=True, getVelocities=True, getEnergy=True)


DT_PS = 2.0


class DampedWalk(torch.nn.Module):
    """Scripted stand-in for an exported model: x' = x + 0.5 v + drift + sigma * noise.

    Positions whose x coordinate passes ``nan_beyond`` nm become NaN, so a
    NaN appears at a step that can be computed in advance.
    """

    def __init__(self, k: int = 3, sigma: float = 0.01, drift: float = 0.0, nan_beyond: float = 1e9,
                 raise_on_nan: bool = False, n_beads: int = 0):
        super().__init__()
        self.k = k
        self.model_dt_ps = DT_PS
        self.md_steps_per_model_step = 1000
        self.md_timestep_ps = 0.002
        self.temperature_K = 300.0
        self.n_beads = n_beads  # 0 = transferable, as the real model
        self.metadata = "{}"
        self.sigma = sigma
        self.drift = drift
        self.nan_beyond = nan_beyond
        self.raise_on_nan = raise_on_nan  # refuse inside the step, as the real model's refinement does
        self.register_buffer("type_masses", torch.ones(8))

    @torch.jit.export
    def embed(self, atom_types: torch.Tensor, fine_edge_index: torch.Tensor, bead_of_atom: torch.Tensor,
              n_beads: int) -> torch.Tensor:
        out = torch.zeros(n_beads, 2, device=atom_types.device)
        return out.index_add(0, bead_of_atom, torch.stack([atom_types.float(), torch.ones_like(atom_types).float()], 1))

    @torch.jit.export
    def noise_draws(self, refine: bool) -> int:
        return 1

    @torch.jit.export
    def step(self, pos_history: torch.Tensor, bead_features: torch.Tensor, coarse_edge_index: torch.Tensor,
             batch: torch.Tensor, box: torch.Tensor, noise: torch.Tensor, refine: bool) -> torch.Tensor:
        if not bool(torch.isfinite(pos_history).all()):  # as the real model does
            raise ValueError("pos_history contains NaN or infinite positions")
        x = pos_history[-1]
        v = x - pos_history[-2]
        new = x + 0.5 * v + self.sigma * noise[0]
        drift = torch.zeros_like(new)
        drift[:, 0] = self.drift
        new = new + drift
        new = torch.where(new[:, :1] > self.nan_beyond, torch.full_like(new, float("nan")), new)
        if self.raise_on_nan and not bool(torch.isfinite(new).all()):
            raise ValueError("pos contains NaN or infinite coordinates")
        return new

    @torch.jit.export
    def predict(self, pos_history: torch.Tensor, bead_features: torch.Tensor, coarse_edge_index: torch.Tensor,
                batch: torch.Tensor, box: torch.Tensor):
        mean = -0.5 * (pos_history[-1] - pos_history[-2])
        return mean, torch.full_like(mean[:, :1], self.sigma)


def chain_molecule(n_atoms: int = 12):
    """A zig-zag chain of carbons with bonds: topology and positions (nm)."""
    topology = app.Topology()
    chain = topology.addChain()
    residue = topology.addResidue("CHN", chain)
    atoms = [topology.addAtom(f"C{i}", app.element.carbon, residue) for i in range(n_atoms)]
    for a, b in zip(atoms[:-1], atoms[1:]):
        topology.addBond(a, b)
    positions = np.array([[0.125 * i, 0.08 * (i % 2), 0.0] for i in range(n_atoms)])
    return topology, positions


def walk_model(mapping, **kwargs):
    return CGModel(torch.jit.script(DampedWalk(**kwargs)), {"mapping": mapping.to_json()})
