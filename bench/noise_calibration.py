"""How well a model's acceleration distribution fits held-out data: exact NLL and interval coverage.

For each model, over every window of one split of a coarse dataset (no history noise, no refinement):

- ``nll_per_bead``: the exact negative log-density of the whole acceleration vector of each
  molecule under the model's noise model, in nats per bead, in physical units (nm per model
  step^2, constant included), so models with other scalings compare;
- ``bead_coverage_95``: fraction of beads whose residual lies inside the 95 % ellipsoid of its
  marginal 3x3 covariance (chi^2, 3 degrees of freedom); calibrated = 0.95;
- ``bond_coverage_95`` and ``bond_z2``: the same for the stretch of each bond, the residual
  difference of a bead and its parent along their bond; calibrated = 0.95 and 1;
- ``one_step_bond_std_ratio`` and ``one_step_bond_mean_shift_nm``: one draw of the step per
  window (no refinement, no corrections) against the data's next frame: the spread of the
  coarse-bond lengths (pooled over bonds) as a ratio, and the shift of their mean; 1 and 0 when
  the step keeps bonded geometry;
- ``one_step_angle_std_ratio`` and ``one_step_torsion_change_ratio``: the same draw's spread of
  the bond angles (pooled) over the data's, and its RMS change of every torsion along bonded
  paths from the current frame over the data's (wrapped to [-180, 180) degrees);
- ``refined_bond_std_ratio``, ``refined_angle_std_ratio`` and ``refined_torsion_change_ratio``:
  the same three for the model's whole step, with its Score refinement (the file's levels, or
  ``--refine-sigmas``) and its truncation, hard core off: what a rollout takes each step;
- ``torsion_drift_by_bin_deg``: the mean change of the torsions over one step in 20-degree bins of
  their current value, for the data, the model's mean step (no noise), one draw and the refined step;
  ``mean_step_drift_retention``, ``one_step_drift_retention`` and ``refined_drift_retention``: the
  share of the data's binned drift each keeps (1 = all of it; the slope through 0, weighted by windows).

Both noise models are linear in their standard normal draws, ``r = M eps``: the script builds
each molecule's ``M`` from the model's own draw of unit vectors and evaluates the Gaussian of
covariance ``M M^T`` directly, so neither model is scored through its training loss. 95 % CIs come
from a bootstrap over blocks of consecutive windows.

    python bench/noise_calibration.py --data runs/bm-bonded/coarse.h5 --split val \
        --model openmm_cgml/pretrained/polymer-chain-1ps.safetensors --model runs/bm-bonded/model.safetensors
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys

import numpy as np
import torch

CHI2_3_95 = 7.814727903251178   # 95 % quantile of chi^2 with 3 degrees of freedom


def _covariances(module, params, x, coarse_edge_index, batch):
    """Each molecule's exact (3n, 3n) covariance of the residual, from the model's own (linear) draw.

    Column ``k`` of every molecule's factor ``M`` (``r = M eps``) is the draw from the k-th unit noise
    vector of that molecule, so all molecules of the batch are done at once; ``Sigma = M M^T``.
    """
    n = x.size(0)
    first = torch.zeros(n, dtype=torch.long).index_reduce(0, batch, torch.arange(n), "amin", include_self=False)
    local = torch.arange(n) - first[batch]
    size = int(local.max()) + 1
    zero = torch.zeros(n, 3, dtype=x.dtype)
    columns = []
    for draw in range(module.dynamics_draws):
        for bead in range(size):
            for dim in range(3):
                eps = torch.zeros(module.dynamics_draws, n, 3, dtype=x.dtype)
                eps[draw, local == bead, dim] = 1.0
                columns.append(module._draw(zero, params, eps, x, coarse_edge_index, batch))
    factor = torch.stack(columns, -1).double()                     # (N, 3, K)
    blocks = []
    for graph in torch.unique(batch):
        beads = torch.nonzero(batch == graph).flatten()
        m = factor[beads].reshape(3 * beads.numel(), -1)
        blocks.append((beads, m @ m.T))
    return blocks


def _window_scores(module, window):
    """(nll summed over beads in accel-std units without the constant, inside-ellipsoid flags (N,),
    bond z^2 (bonds,)) for one batch of windows."""
    from openmm_cgml.model.batch import graph_box, unwrap
    from openmm_cgml.model.bonded_noise import bond_parents
    from openmm_cgml.model.sampler import euler_step

    n = window.pos_history.size(0)
    features = module._embed(window.atom_types, window.fine_edge_index, window.bead_of_atom, n)
    history = window.pos_history[:, -module.k:].transpose(0, 1).contiguous()
    box = window.box if getattr(window, "box", None) is not None else torch.zeros(1, 3, 3)
    boxes = graph_box(box, window.batch)
    history = unwrap(history, history[-1], boxes, window.batch)
    target = unwrap(window.pos_target, history[-1], boxes, window.batch)
    accel = (target - 2.0 * history[-1] + history[-2]) / module.accel_std_nm
    mean, params, _ = module._dynamics(history, features, window.coarse_edge_index, window.batch, boxes)
    r = (accel - mean).double()
    x = history[-1].double()
    parent = bond_parents(window.coarse_edge_index, n)
    nll = torch.zeros((), dtype=torch.float64)
    inside = torch.zeros(n, dtype=torch.bool)
    z2 = []
    for beads, cov in _covariances(module, params, history[-1], window.coarse_edge_index, window.batch):
        chol = torch.linalg.cholesky(cov)
        z = torch.linalg.solve_triangular(chol, r[beads].reshape(-1, 1), upper=False)
        nll = nll + 0.5 * z.pow(2).sum() + torch.log(torch.diagonal(chol)).sum()
        for i, bead in enumerate(beads.tolist()):
            block = cov[3 * i:3 * i + 3, 3 * i:3 * i + 3]
            inside[bead] = r[bead] @ torch.linalg.solve(block, r[bead]) < CHI2_3_95
            if parent[bead] != bead:   # the stretch of the bond to the parent: a^T r with a = (u at i, -u at p)
                j = int((beads == parent[bead]).nonzero())
                axis = x[bead] - x[parent[bead]]
                a = torch.zeros(3 * beads.numel(), dtype=torch.float64)
                a[3 * i:3 * i + 3], a[3 * j:3 * j + 3] = axis / axis.norm(), -axis / axis.norm()
                z2.append(float((a @ r[beads].reshape(-1)) ** 2 / (a @ cov @ a)))
    # one draw of the step per window (no refinement or corrections): its bond lengths against the data's
    eps = torch.randn(module.dynamics_draws, n, 3, generator=torch.Generator().manual_seed(n))
    sample = euler_step(history, module._draw(mean, params, eps, history[-1], window.coarse_edge_index,
                                              window.batch), module.accel_std_nm)
    noise = torch.randn(module.noise_draws(True), n, 3, generator=torch.Generator().manual_seed(n + 1))
    refined = module.step(history, features, window.coarse_edge_index, window.batch, box, noise, True)
    bonds = window.coarse_edge_index[:, window.coarse_edge_index[0] < window.coarse_edge_index[1]].T.numpy()
    step_mean = euler_step(history, mean, module.accel_std_nm)
    frames = {"current": history[-1], "target": target, "mean": step_mean, "sample": sample, "refined": refined}
    return float(nll), inside.numpy(), np.array(z2), _geometry(frames, bonds)


def _geometry(frames: dict, bonds: np.ndarray) -> dict:
    """Bond lengths (nm), bond angles and torsions (degrees) of each named (N, 3) frame, pooled."""
    from openmm_cgml.evaluation.analysis import angle_triplets, bond_angles, dihedral_angles, dihedral_quadruplets

    triplets, quadruplets = angle_triplets(bonds), dihedral_quadruplets(bonds)
    out = {}
    for name, x in frames.items():
        xyz = x.detach().double().numpy()[None]
        out[name] = {"bond": np.linalg.norm(xyz[0, bonds[:, 0]] - xyz[0, bonds[:, 1]], axis=-1),
                     "angle": np.degrees(bond_angles(xyz, triplets)[0]) if len(triplets) else np.zeros(0),
                     "torsion": np.degrees(dihedral_angles(xyz, quadruplets)[0]) if len(quadruplets) else np.zeros(0)}
    return out


DRIFT_BINS_DEG = np.arange(-180.0, 181.0, 20.0)


def _torsion_changes(geometry: list, frame: str) -> np.ndarray:
    """Every torsion's change (degrees, wrapped to [-180, 180)) from the current frame to ``frame``, pooled."""
    def pooled(name):
        return np.concatenate([g[name]["torsion"] for g in geometry])

    return (pooled(frame) - pooled("current") + 180.0) % 360.0 - 180.0


def _torsion_drift(geometry: list) -> dict:
    """Mean torsion change (degrees) over one step in 20-degree bins of the current torsion: the data's, and that
    of the model's mean step, one draw and the refined step; and the share of the data's drift each keeps (the
    count-weighted least-squares slope of its binned drift on the data's, through 0)."""
    current = np.concatenate([g["current"]["torsion"] for g in geometry])
    which = np.digitize(current, DRIFT_BINS_DEG[1:-1])
    counts = np.bincount(which, minlength=len(DRIFT_BINS_DEG) - 1)
    table = {"bin_start_deg": DRIFT_BINS_DEG[:-1].tolist(), "windows": counts.tolist()}
    for frame, name in (("target", "data"), ("mean", "mean"), ("sample", "draw"), ("refined", "refined")):
        sums = np.bincount(which, weights=_torsion_changes(geometry, frame), minlength=len(counts))
        table[name] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).tolist()
    data = np.nan_to_num(np.array(table["data"]))
    retention = {name: float((counts * data * np.nan_to_num(np.array(table[name]))).sum() / (counts * data ** 2).sum())
                 for name in ("mean", "draw", "refined")}
    return {"table": table, "retention": retention}


def _geometry_ratios(geometry: list) -> dict:
    """The one-step geometry scores of a list of ``_geometry`` results (see the module docstring)."""
    def pooled(frame, kind):
        return np.concatenate([g[frame][kind] for g in geometry])

    def torsion_change(frame):
        change = _torsion_changes(geometry, frame)
        return float(np.sqrt(np.mean(change ** 2))) if change.size else float("nan")

    def std_ratio(frame, kind):
        values = pooled(frame, kind)
        return float(values.std() / pooled("target", kind).std()) if values.size else float("nan")

    target_change = torsion_change("target")
    drift = _torsion_drift(geometry)["retention"] if pooled("current", "torsion").size else {}
    return {"mean_step_drift_retention": drift.get("mean", float("nan")),
            "one_step_drift_retention": drift.get("draw", float("nan")),
            "refined_drift_retention": drift.get("refined", float("nan")),
            "one_step_bond_std_ratio": std_ratio("sample", "bond"),
            "one_step_bond_mean_shift_nm": float(pooled("sample", "bond").mean() - pooled("target", "bond").mean()),
            "one_step_angle_std_ratio": std_ratio("sample", "angle"),
            "one_step_torsion_change_ratio": torsion_change("sample") / target_change,
            "refined_bond_std_ratio": std_ratio("refined", "bond"),
            "refined_angle_std_ratio": std_ratio("refined", "angle"),
            "refined_torsion_change_ratio": torsion_change("refined") / target_change,
            "data_torsion_change_deg": target_change}


def evaluate(model_path: str, data: str, split: str, batch_size: int, block: int, n_boot: int, seed: int,
             refine_sigmas=None) -> dict:
    """The scores of one model on every window of ``split``, with bootstrap CIs over blocks of ``block``
    consecutive windows of one trajectory."""
    from torch.utils.data import Subset
    from torch_geometric.loader import DataLoader

    import openmm_cgml
    from openmm_cgml.data import CoarseDataset
    from openmm_cgml.model_file import rebuild

    module = rebuild(openmm_cgml.load(model_path)).eval()   # networks in float32; densities in float64
    if hasattr(module, "coordinate_noise"):
        raise ValueError(f"{model_path}: internal-coordinate noise is not a Gaussian of the Cartesian step, which "
                         "this script scores; its one-step torsions are in the peptide benchmark")
    module.hard_core, module.validate_inputs = False, False
    if refine_sigmas:
        module.refine_sigmas = [float(sigma) for sigma in refine_sigmas]
    dataset = CoarseDataset(data, split=split, k=module.k)
    trajectory = np.array([dataset.locate(i)[0] for i in range(len(dataset))])
    per_block: dict[tuple, list] = {}
    with torch.no_grad():
        for traj in np.unique(trajectory):
            indices = np.flatnonzero(trajectory == traj)
            for start in range(0, len(indices), block):
                windows = Subset(dataset, indices[start:start + block].tolist())
                for window in DataLoader(windows, batch_size=batch_size, shuffle=False):
                    nll, inside, z2, geometry = _window_scores(module, window)
                    per_block.setdefault((int(traj), start), []).append(
                        (nll, inside, z2, window.pos_history.size(0), geometry))
    const = 1.5 * math.log(2 * math.pi) + 3.0 * math.log(module.accel_std_nm)

    def summary(groups):
        nll = sum(g[0] for g in groups) / sum(g[3] for g in groups) + const
        inside = np.concatenate([g[1] for g in groups])
        z2 = np.concatenate([g[2] for g in groups])
        return {"nll_per_bead": nll, "bead_coverage_95": float(inside.mean()),
                "bond_coverage_95": float((z2 < 1.959963984540054 ** 2).mean()), "bond_z2": float(z2.mean()),
                **_geometry_ratios([g[4] for g in groups])}

    everything = [g for groups in per_block.values() for g in groups]
    result = {key: {"value": value} for key, value in summary(everything).items()}
    rng = np.random.default_rng(seed)
    blocks = list(per_block.values())
    boots = [summary([g for i in rng.integers(0, len(blocks), len(blocks)) for g in blocks[i]]) for _ in range(n_boot)]
    for key in result:
        values = [b[key] for b in boots]
        result[key]["ci95"] = [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]
    if any(g[4]["current"]["torsion"].size for g in everything):
        result["torsion_drift_by_bin_deg"] = _torsion_drift([g[4] for g in everything])["table"]
    init = json.loads(module.init_json)
    return {"model": model_path, "noise": init["config"].get("noise", "independent"),
            "refine_sigmas": list(module.refine_sigmas),
            "windows": len(dataset), "trajectories": len(np.unique(trajectory)),
            "blocks": len(blocks), **result}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="coarse dataset (.h5)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--model", action="append", required=True, help="model file (repeat to compare)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--block", type=int, default=200, help="windows per bootstrap block")
    parser.add_argument("--bootstrap", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--refine-sigmas", type=float, nargs="+", default=None,
                        help="Score refinement levels of the refined scores (default: each file's own)")
    args = parser.parse_args(argv)
    if args.refine_sigmas and not all(sigma > 0 for sigma in args.refine_sigmas):
        parser.error("--refine-sigmas must all be > 0")
    torch.set_num_threads(1)
    try:
        rows = [evaluate(path, args.data, args.split, args.batch_size, args.block, args.bootstrap, args.seed,
                         args.refine_sigmas) for path in args.model]
    except (OSError, ValueError) as error:   # a missing or unreadable dataset or model file: one line
        parser.exit(2, f"bench/noise_calibration.py: {error}\n")
    print(json.dumps({"bench": "noise_calibration", "data": args.data, "split": args.split, "rows": rows,
                      "hardware": {"machine": platform.machine(), "torch": torch.__version__}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
