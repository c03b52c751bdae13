"""Can a Gaussian transition density in torsion space hold a peptide's Ramachandran distribution? Prints JSON.

A model-free check of the step's noise family, on the torsions of the beads of a coarse dataset
(alanine dipeptide, backbone mapping: phi and psi). From the train split it builds Markov kernels
over one model step, conditioned on the current (phi, psi) in ``--state-bins`` x ``--state-bins``
bins, each torsion's change drawn on its own:

- ``gaussian``: one Gaussian per bin and torsion, with the data's mean and std of the change (the
  best a single Gaussian of the change can do, history aside);
- ``mixture_K``: a K-component Gaussian mixture per bin and torsion (scikit-learn, EM);
- ``empirical``: the data's own (phi, psi) changes from that bin, resampled.

A bin without training data takes its nearest populated bin's kernel. It rolls each kernel out
from random training frames and scores the Ramachandran JS (36 x 36 bins, the peptide
benchmark's) against the validation split, with a 95 % bootstrap CI over rollouts, and the
fraction of frames with phi > 0 (the validation data's is given). ``train_vs_val`` is the same JS
between the two splits of the data: the floor.

Usage::

    python bench/torsion_kernels.py runs/ala2-long/coarse.h5 runs/ala2-2ps/coarse.h5 runs/ala2-5ps/coarse.h5 \
        runs/ala2-10ps/coarse.h5 runs/ala2-20ps/coarse.h5 --out bench/results/torsion-kernels-alanine-dipeptide.json

Over one model step: the dataset's ``lag`` saved frames.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from openmm_cgml.evaluation.analysis import dihedral_angles, dihedral_quadruplets, js_divergence
from openmm_cgml.evaluation.statistics import bootstrap_ci

EDGES = np.linspace(-np.pi, np.pi, 37)


def _wrap(a):
    return (a + np.pi) % (2 * np.pi) - np.pi


def read_torsions(path) -> tuple[dict, int, float]:
    """``{"train": [...], "val": [...]}``: (frames, 2) bead torsions (radians) per trajectory, the saved
    frames per model step (the dataset's ``lag``) and the model step (ps, NaN if unrecorded)."""
    out = {"train": [], "val": []}
    with h5py.File(path, "r") as handle:
        lag = int(handle.attrs.get("lag", 1))
        step_ps = float(handle.attrs.get("model_dt_ps", float("nan")))
        for name in sorted(handle["traj"]):
            group = handle["traj"][name]
            split = group.attrs["split"]
            split = split.decode() if isinstance(split, bytes) else str(split)
            quads = dihedral_quadruplets(group["coarse_bonds"][()])
            if len(quads) != 2:
                raise SystemExit(f"torsion_kernels: {path}: expected 2 bead torsions (phi, psi), found {len(quads)}")
            if split in out:
                out[split].append(dihedral_angles(group["positions"][()], quads))
    if not out["train"] or not out["val"]:
        raise SystemExit(f"torsion_kernels: {path} needs train and val trajectories")
    return out, lag, step_ps


class BinnedKernel:
    """One-step kernel over (phi, psi) from the train split's changes, per state bin (module docstring)."""

    def __init__(self, trajectories, lag: int, state_bins: int, kind: str, rng):
        self.bins, self.kind, self.rng = state_bins, kind, rng
        now = np.concatenate([t[:-lag] for t in trajectories])
        change = np.concatenate([_wrap(t[lag:] - t[:-lag]) for t in trajectories])
        keys = self.key(now)
        self.changes = {k: change[keys == k] for k in np.unique(keys) if (keys == k).sum() >= 30}
        self.populated = np.array(sorted(self.changes))
        self.fits = {k: [self._fit(c[:, i]) for i in range(2)] for k, c in self.changes.items()}

    def key(self, torsions):
        cell = ((torsions + np.pi) / (2 * np.pi) * self.bins).astype(int) % self.bins
        return cell[..., 0] * self.bins + cell[..., 1]

    def _fit(self, values):
        if self.kind == "gaussian":
            return np.ones(1), values.mean(keepdims=True), values.std(keepdims=True)
        if self.kind == "empirical":
            return None
        from sklearn.mixture import GaussianMixture
        mixture = GaussianMixture(int(self.kind.split("_")[1]), random_state=0).fit(values[:, None])
        return mixture.weights_ / mixture.weights_.sum(), mixture.means_[:, 0], np.sqrt(mixture.covariances_.ravel())

    def _nearest(self, key):
        i, j = divmod(int(key), self.bins)
        pi, pj = np.divmod(self.populated, self.bins)
        di = np.minimum(abs(pi - i), self.bins - abs(pi - i))
        dj = np.minimum(abs(pj - j), self.bins - abs(pj - j))
        return self.populated[np.argmin(di ** 2 + dj ** 2)]

    def draw(self, torsions):
        key = self.key(torsions)
        key = key if key in self.changes else self._nearest(key)
        if self.kind == "empirical":
            pool = self.changes[key]
            return pool[self.rng.integers(len(pool))]
        out = np.empty(2)
        for i, (weights, means, stds) in enumerate(self.fits[key]):
            c = self.rng.choice(len(weights), p=weights)
            out[i] = self.rng.normal(means[c], stds[c])
        return out


def rollout(kernel, start, steps):
    frames = np.empty((steps + 1, 2))
    frames[0] = start
    for i in range(steps):
        frames[i + 1] = _wrap(frames[i] + kernel.draw(frames[i]))
    return frames


def rama_js(a, b) -> float:
    return js_divergence(np.histogram2d(a[:, 0], a[:, 1], [EDGES, EDGES])[0],
                         np.histogram2d(b[:, 0], b[:, 1], [EDGES, EDGES])[0])


def score_dataset(path, args) -> dict:
    """Every kernel's rollouts against the val split of one dataset."""
    started = time.perf_counter()
    data, lag, step_ps = read_torsions(path)
    val = np.concatenate(data["val"])
    train = np.concatenate(data["train"])
    rng = np.random.default_rng(args.seed)
    starts = train[rng.integers(len(train), size=args.rollouts)]
    rows = {}
    for kind in ["gaussian", *[f"mixture_{k}" for k in args.components], "empirical"]:
        kernel = BinnedKernel(data["train"], lag, args.state_bins, kind, np.random.default_rng(args.seed + 1))
        runs = [rollout(kernel, s, args.steps) for s in starts]
        pooled = np.concatenate(runs)
        rows[kind] = {"rama_js": rama_js(pooled, val),
                      "ci95": bootstrap_ci(runs, lambda idx: rama_js(np.concatenate([runs[i] for i in idx]), val),
                                           n_boot=300)[1],
                      "phi_positive_fraction": float((pooled[:, 0] > 0).mean())}
        print(f"{path} ({lag} frames per step) {kind}: Ramachandran JS {rows[kind]['rama_js']:.3f}", file=sys.stderr)
    return {"data": str(path), "model_step_ps": step_ps, "frames_per_step": lag,
            "train_vs_val": rama_js(train, val), "val_phi_positive_fraction": float((val[:, 0] > 0).mean()),
            "kernels": rows, "seconds": time.perf_counter() - started}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", nargs="+", help="coarse datasets (.h5), each with train and val trajectories of a "
                        "2-torsion chain (say, one molecule at several model steps)")
    parser.add_argument("--state-bins", type=int, default=18, help="bins per torsion of the kernels' state")
    parser.add_argument("--components", type=int, nargs="+", default=[2, 3, 4], help="mixture sizes to try")
    parser.add_argument("--rollouts", type=int, default=24)
    parser.add_argument("--steps", type=int, default=1000, help="model steps per rollout")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.state_bins < 2 or args.rollouts < 2 or args.steps < 1 or min(args.components) < 1:
        raise SystemExit("torsion_kernels: --state-bins and --rollouts must be >= 2, --steps and --components >= 1")
    datasets = []
    for path in args.data:
        try:
            datasets.append(score_dataset(path, args))
        except (OSError, KeyError) as error:   # a missing, unreadable or non-coarse dataset file: one line
            parser.exit(2, f"bench/torsion_kernels.py: {path}: not a readable coarse dataset ({error})\n")
    result = {"torsions": "bead torsions of the coarse bonds (phi, psi)", "state_bins": args.state_bins,
              "rollouts": args.rollouts, "steps": args.steps,
              "split": "kernels from the train split, scored against the val split", "datasets": datasets}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
