"""Property task: does a backbone learn real physics?

Configurations of a reference system (default: alanine dipeptide in GBn2
implicit solvent) are sampled by short Langevin MD at a few temperatures, in
several independent trajectories (through :func:`openmm_cgml.generate.generate`,
with forces saved). A model then predicts from the positions alone

* the potential energy (kJ/mol), with forces (kJ/mol/nm) as its negative
  gradient, trained jointly on energies and forces, and
* the dipole moment sum_i q_i (r_i - centroid) from the force field's partial
  charges (e nm; reported in Debye), a vector predicted equivariantly.

Train and test sets are split by trajectory, so test frames are never
neighbours in time of training frames. ``bench/backbone.py`` runs this task
for PaxNet, DimeNet++ and SchNet side by side.

A model for this task is any ``torch.nn.Module`` ("atomwise model") called as
``atomwise(z, pos, batch, bonds) -> (scalars (N, 2), vectors (N, 3))``:
per-atom energy contribution and charge-like scalar, and a per-atom dipole
vector (zeros for models without a vector channel). :class:`PropertyModel`
turns it into energies, forces and dipoles.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from openmm_cgml.io import atomic_path
from openmm_cgml.units import KELVIN, PS, strip

__all__ = ["DEBYE_PER_E_NM", "PropertyData", "sample_configurations", "dipole_moments", "PaxNetAtomwise",
           "PropertyModel", "train", "evaluate"]

DEBYE_PER_E_NM = 48.03204   # 1 e nm in Debye
# elements that get their own one-hot channel (others share the last one)
_ELEMENTS = (1, 6, 7, 8, 9, 15, 16, 17)


@dataclass
class PropertyData:
    """Frames of one molecule with energies, forces and dipoles.

    positions (F, N, 3) nm; energies (F,) kJ/mol; forces (F, N, 3) kJ/mol/nm;
    dipoles (F, 3) e nm; trajectory (F,) id of the MD run each frame came
    from; temperature (F,) K; atom_types (N,) atomic numbers; charges (N,) e;
    bonds (B, 2).
    """

    positions: np.ndarray
    energies: np.ndarray
    forces: np.ndarray
    dipoles: np.ndarray
    trajectory: np.ndarray
    temperature: np.ndarray
    atom_types: np.ndarray
    charges: np.ndarray
    bonds: np.ndarray

    @property
    def n_frames(self) -> int:
        return int(self.positions.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[1])

    def save(self, path) -> None:
        """Write to ``path`` (.npz) through a temporary file, so a failure never leaves half a file."""
        with atomic_path(path) as temporary, open(temporary, "wb") as stream:
            # a file object, not a name: np.savez would append ".npz" to the temporary name
            np.savez(stream, **{k: getattr(self, k) for k in self.__dataclass_fields__})

    @classmethod
    def load(cls, path) -> "PropertyData":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"property data file {path} does not exist")
        try:
            with np.load(path) as f:
                data = cls(**{k: f[k] for k in cls.__dataclass_fields__})
        except (KeyError, ValueError, OSError) as error:
            raise ValueError(f"{path} is not a property data file ({error})") from None
        data.check(str(path))
        return data

    def check(self, where: str = "property data") -> None:
        f, n = self.n_frames, self.n_atoms
        shapes = {"positions": (f, n, 3), "energies": (f,), "forces": (f, n, 3), "dipoles": (f, 3),
                  "trajectory": (f,), "temperature": (f,), "atom_types": (n,), "charges": (n,)}
        for name, shape in shapes.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"{where}: {name} has shape {getattr(self, name).shape}, expected {shape}")
        for name in ("positions", "energies", "forces", "dipoles"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ValueError(f"{where}: {name} contains NaN or infinite values")

    def split(self, test_trajectories: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Frame indices (train, test), whole trajectories on either side."""
        test = np.isin(self.trajectory, np.asarray(list(test_trajectories)))
        if not test.any() or test.all():
            raise ValueError(f"test trajectories {list(test_trajectories)} leave an empty train or test set "
                             f"(trajectories present: {sorted(set(self.trajectory.tolist()))})")
        return np.flatnonzero(~test), np.flatnonzero(test)


def dipole_moments(positions: np.ndarray, charges: np.ndarray) -> np.ndarray:
    """sum_i q_i (r_i - centroid), (..., N, 3) nm and (N,) e -> (..., 3) e nm.

    Relative to the centroid so that it does not depend on the origin even
    for a molecule with a net charge (for a neutral one it is sum_i q_i r_i).
    """
    centred = positions - positions.mean(axis=-2, keepdims=True)
    return np.einsum("...ni,n->...i", centred, charges)


def sample_configurations(out, system: str = "alanine-dipeptide", temperatures=(300.0, 450.0, 600.0),
                          trajectories_per_temperature: int = 3, frames: int = 150, stride: int = 50,
                          timestep=0.001 * PS, constraints: str = "None", seed: int = 0,
                          platform: str | None = None, progress: bool = False) -> PropertyData:
    """Sample configurations by Langevin MD and label them with energies, forces and dipoles.

    Trajectories are written by :func:`openmm_cgml.generate.generate` under
    ``out/T<temperature>/`` (kept, so the raw MD can be inspected); trajectory
    ids number them in order. Without constraints (the default) bond
    vibrations are sampled too, so forces along bonds are learnable.
    """
    from openmm_cgml.generate import generate
    from openmm_cgml.trajectory import FineTrajectory

    timestep_ps = strip(timestep, PS, "timestep")
    temps = [strip(t, KELVIN, "temperature") for t in temperatures]
    if not temps or min(temps) <= 0:
        raise ValueError(f"temperatures must be positive, got {temps}")
    parts = []
    trajectory_id = 0
    for k, temperature in enumerate(temps):
        paths = generate(system, Path(out) / f"T{temperature:g}", frames=frames, stride=stride,
                         replicas=trajectories_per_temperature, seed=seed + 1000 * k, save_forces=True,
                         params={"temperature_K": temperature, "timestep_ps": timestep_ps,
                                 "constraints": constraints}, platform=platform, progress=progress)
        for path in paths:
            with FineTrajectory(path) as traj:
                if traj.is_periodic:
                    raise ValueError(f"{system}: the property task expects a non-periodic molecule")
                positions = np.asarray(traj.positions[:], dtype=np.float32)
                parts.append(dict(positions=positions,
                                  energies=np.asarray(traj.potential_energy, dtype=np.float64),
                                  forces=np.asarray(traj.forces[:], dtype=np.float32),
                                  trajectory=np.full(len(positions), trajectory_id),
                                  temperature=np.full(len(positions), temperature),
                                  atom_types=traj.atom_types, charges=traj.charges, bonds=traj.bonds))
            trajectory_id += 1
    first = parts[0]
    positions = np.concatenate([p["positions"] for p in parts])
    data = PropertyData(positions=positions, energies=np.concatenate([p["energies"] for p in parts]),
                        forces=np.concatenate([p["forces"] for p in parts]),
                        dipoles=dipole_moments(positions.astype(np.float64), first["charges"]),
                        trajectory=np.concatenate([p["trajectory"] for p in parts]),
                        temperature=np.concatenate([p["temperature"] for p in parts]),
                        atom_types=np.asarray(first["atom_types"], dtype=np.int64),
                        charges=np.asarray(first["charges"], dtype=np.float64),
                        bonds=np.asarray(first["bonds"], dtype=np.int64).reshape(-1, 2))
    data.check(system)
    return data


def element_one_hot(z: Tensor) -> Tensor:
    """(N,) atomic numbers -> (N, len(_ELEMENTS) + 1) one-hot, last channel = any other element."""
    table = torch.tensor(_ELEMENTS, device=z.device)
    match = z.unsqueeze(1) == table.unsqueeze(0)
    other = ~match.any(dim=1, keepdim=True)
    return torch.cat([match, other], dim=1).float()


class PaxNetAtomwise(torch.nn.Module):
    """PaxNet with per-atom heads: (energy, charge) scalars and a dipole vector per atom."""

    def __init__(self, hidden: int = 64, n_layers: int = 3, cutoff: float = 0.5, **paxnet_args):
        super().__init__()
        from openmm_cgml.nn import PaxNet

        self.backbone = PaxNet(hidden=hidden, n_layers=n_layers, cutoff=cutoff,
                               scalar_in=len(_ELEMENTS) + 1, **paxnet_args)
        self.scalar_head = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
                                               torch.nn.Linear(hidden, 2))
        self.vector_head = torch.nn.Linear(hidden, 1, bias=False)
        # start from E = mean energy, no forces, no dipole (as DimeNet++'s zero-initialised outputs)
        for layer in (self.scalar_head[-1], self.vector_head):
            torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(self.scalar_head[-1].bias)

    def forward(self, z: Tensor, pos: Tensor, batch: Tensor, bonds: Tensor) -> tuple[Tensor, Tensor]:
        s = element_one_hot(z).to(pos.dtype)
        v = torch.zeros(pos.size(0), 3, 0, dtype=pos.dtype, device=pos.device)
        h, vec = self.backbone(s, v, pos, bonds, batch, None)
        return self.scalar_head(h), self.vector_head(vec).squeeze(-1)


class PropertyModel(torch.nn.Module):
    """Energies (kJ/mol), forces (kJ/mol/nm) and dipoles (e nm) from an atomwise model.

    E = energy_scale * sum_i e_i + energy_shift;  F = -dE/dr;
    mu = sum_i q_i (r_i - centroid) + sum_i mu_i, with q_i, mu_i learned.
    The scale/shift are set from the training data (:meth:`fit_normalisation`)
    so the network works with O(1) numbers.
    """

    def __init__(self, atomwise: torch.nn.Module):
        super().__init__()
        self.atomwise = atomwise
        self.register_buffer("energy_shift", torch.zeros(()))
        self.register_buffer("energy_scale", torch.ones(()))
        self.register_buffer("dipole_scale", torch.ones(()))

    def fit_normalisation(self, data: PropertyData, idx: np.ndarray) -> None:
        self.energy_shift.fill_(float(data.energies[idx].mean()))
        # per-atom outputs of O(1) give forces of O(force rms) with this scale
        self.energy_scale.fill_(float(np.sqrt((data.forces[idx].astype(np.float64) ** 2).mean())) * 0.1)
        self.dipole_scale.fill_(float(np.sqrt((data.dipoles[idx] ** 2).mean())) / math.sqrt(data.n_atoms))

    def forward(self, z: Tensor, pos: Tensor, batch: Tensor, bonds: Tensor, n_graphs: int,
                create_graph: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        pos = pos.requires_grad_(True) if not pos.requires_grad else pos
        scalars, vectors = self.atomwise(z, pos, batch, bonds)
        zeros = torch.zeros(n_graphs, dtype=pos.dtype, device=pos.device)
        energy = zeros.index_add(0, batch, scalars[:, 0]) * self.energy_scale + self.energy_shift
        (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=create_graph)
        count = torch.zeros(n_graphs, dtype=pos.dtype, device=pos.device).index_add(
            0, batch, torch.ones_like(batch, dtype=pos.dtype))
        centroid = torch.zeros(n_graphs, 3, dtype=pos.dtype, device=pos.device).index_add(0, batch, pos)
        centroid = centroid / count[:, None]
        per_atom = scalars[:, 1:2] * (pos - centroid[batch]) + vectors
        dipole = torch.zeros(n_graphs, 3, dtype=pos.dtype, device=pos.device).index_add(0, batch, per_atom)
        return energy, -grad, dipole * self.dipole_scale


def _batches(data: PropertyData, idx: np.ndarray, batch_size: int, shuffle: bool,
             generator: np.random.Generator | None = None) -> Iterator[dict]:
    """Fixed-topology batches: frames stacked, bonds offset per frame."""
    order = generator.permutation(idx) if shuffle else np.asarray(idx)
    n = data.n_atoms
    z = torch.as_tensor(data.atom_types, dtype=torch.long)
    bonds = torch.as_tensor(data.bonds, dtype=torch.long).t()
    for start in range(0, len(order), batch_size):
        frames = order[start:start + batch_size]
        b = len(frames)
        yield dict(z=z.repeat(b), pos=torch.as_tensor(data.positions[frames]).reshape(b * n, 3),
                   batch=torch.arange(b).repeat_interleave(n),
                   bonds=torch.cat([bonds + k * n for k in range(b)], dim=1),
                   energy=torch.as_tensor(data.energies[frames], dtype=torch.float32),
                   forces=torch.as_tensor(data.forces[frames]).reshape(b * n, 3),
                   dipole=torch.as_tensor(data.dipoles[frames], dtype=torch.float32), n_graphs=b)


def _loss(model: PropertyModel, batch: dict, sigma: dict, weights: dict) -> Tensor:
    energy, forces, dipole = model(batch["z"], batch["pos"], batch["batch"], batch["bonds"], batch["n_graphs"],
                                   create_graph=True)
    return (weights["energy"] * (((energy - batch["energy"]) / sigma["energy"]) ** 2).mean()
            + weights["forces"] * (((forces - batch["forces"]) / sigma["forces"]) ** 2).mean()
            + weights["dipole"] * (((dipole - batch["dipole"]) / sigma["dipole"]) ** 2).mean())


def train(model: PropertyModel, data: PropertyData, train_idx: np.ndarray, epochs: int = 20,
          batch_size: int = 16, lr: float = 1e-3, weights: dict | None = None, seed: int = 0,
          max_seconds: float | None = None, log=None) -> dict:
    """Adam with a cosine learning-rate decay on the joint energy/force/dipole loss.

    Each loss term is divided by the standard deviation of its training
    targets. With ``max_seconds`` the run is a wall-time budget: the cosine
    follows elapsed time and training stops when the budget is spent (or
    after ``epochs``), so models of different speed get the same compute.
    Returns a history dict: ``epochs`` done, ``loss`` per epoch, ``train_ms_per_batch``.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    weights = {"energy": 1.0, "forces": 1.0, "dipole": 1.0, **(weights or {})}
    torch.manual_seed(seed)
    generator = np.random.default_rng(seed)
    model.fit_normalisation(data, train_idx)
    sigma = {"energy": float(data.energies[train_idx].std()) or 1.0,
             "forces": float(data.forces[train_idx].std()) or 1.0,
             "dipole": float(data.dipoles[train_idx].std()) or 1.0}
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    total_steps = epochs * math.ceil(len(train_idx) / batch_size)
    lr_min = 0.02 * lr
    history = {"loss": [], "epochs": 0}
    batch_seconds, step = 0.0, 0
    started = time.perf_counter()
    out_of_time = False
    model.train()
    for epoch in range(epochs):
        total, seen = 0.0, 0
        for batch in _batches(data, train_idx, batch_size, True, generator):
            elapsed = time.perf_counter() - started
            progress = step / total_steps if max_seconds is None else max(step / total_steps, elapsed / max_seconds)
            if progress >= 1.0:
                out_of_time = True
                break
            for group in optimizer.param_groups:
                group["lr"] = lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * progress))
            t0 = time.perf_counter()
            optimizer.zero_grad()
            loss = _loss(model, batch, sigma, weights)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            batch_seconds += time.perf_counter() - t0
            step += 1
            total += float(loss.detach()) * batch["n_graphs"]
            seen += batch["n_graphs"]
        if seen == 0:
            break
        history["loss"].append(total / seen)
        history["epochs"] = epoch + 1
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs} loss {history['loss'][-1]:.4f} ({time.perf_counter() - started:.0f} s)")
        if out_of_time:
            break
    history["train_ms_per_batch"] = 1000.0 * batch_seconds / max(step, 1)
    history["steps"] = step
    return history


def evaluate(model: PropertyModel, data: PropertyData, idx: np.ndarray, batch_size: int = 16) -> dict:
    """Test MAEs: ``energy_mae`` kJ/mol, ``force_mae`` kJ/mol/nm (per component),
    ``dipole_mae`` Debye (per component), and ``infer_ms_per_batch`` (energy + forces + dipole)."""
    model.eval()
    err_e, err_f, err_mu = [], [], []
    seconds, n_batches = 0.0, 0
    for batch in _batches(data, idx, batch_size, False):
        t0 = time.perf_counter()
        energy, forces, dipole = model(batch["z"], batch["pos"], batch["batch"], batch["bonds"], batch["n_graphs"])
        seconds += time.perf_counter() - t0
        n_batches += 1
        err_e.append((energy.detach() - batch["energy"]).abs())
        err_f.append((forces.detach() - batch["forces"]).abs().flatten())
        err_mu.append((dipole.detach() - batch["dipole"]).abs().flatten())
    return {"energy_mae": float(torch.cat(err_e).mean()),
            "force_mae": float(torch.cat(err_f).mean()),
            "dipole_mae": float(torch.cat(err_mu).mean()) * DEBYE_PER_E_NM,
            "infer_ms_per_batch": 1000.0 * seconds / max(n_batches, 1)}
