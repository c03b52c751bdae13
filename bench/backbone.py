"""PaxNet vs PyG's DimeNet++ and SchNet on the property task, in one run; prints JSON.

Same data (alanine dipeptide, GBn2, Langevin MD at 300/450/600 K, split by
trajectory), same batches (same shuffling seed), same training wall-time
budget (default; or the same number of epochs) and hardware for every model.
Each model runs in its own subprocess so its peak memory is its own: on CPU
the peak resident-set growth during training and testing (VmHWM after
resetting it, minus VmRSS before), on CUDA torch.cuda.max_memory_allocated.

Output: one object per model (``paxnet``, ``dimenetpp``, ``schnet``) with
``energy_mae`` (kJ/mol), ``force_mae`` (kJ/mol/nm, per component),
``dipole_mae`` (Debye, per component), ``peak_mem_mb``, ``train_ms_per_batch``,
``infer_ms_per_batch`` (energy + forces + dipole) and ``params``, plus
``hardware``, ``config`` and ``ratios`` (PaxNet / baseline).

    python bench/backbone.py                      # default, ~10 min on 2 CPU cores
    python bench/backbone.py --max-seconds-per-model 1200 --frames 500 --hidden 128   # a bigger run
    python bench/backbone.py --max-seconds-per-model 0 --epochs 20   # equal epochs instead of equal time
    python bench/backbone.py --neighbors          # radius_graph dense vs cell list timings
    python bench/backbone.py --overhead           # per-call cost (PaxNet, model step) before/after

PyG's radius_graph needs torch_cluster, which is not installable here, so the
baselines use openmm_cgml.nn.radius_graph (same edges, same convention).
DimeNet++/SchNet get a fair dipole head: two per-atom outputs (energy share,
charge-like q_i), dipole = sum_i q_i (r_i - centroid); PaxNet's head adds a
per-atom vector from its equivariant channel.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
MODELS = ("paxnet", "dimenetpp", "schnet")


# ------------------------------------------------------------------ baselines
def use_plain_torch_graph_ops() -> None:
    """Point PyG's DimeNet/SchNet at plain-torch graph code.

    torch_cluster (radius_graph) and torch_sparse (DimeNet's triplets) are not
    installable here; the replacements return the same edges and triplets.
    """
    from torch_geometric.nn.models import dimenet, schnet

    from openmm_cgml.nn import radius_graph

    def pyg_radius_graph(x, r, batch=None, loop=False, max_num_neighbors=32, flow="source_to_target",
                         num_workers=1, batch_size=None):
        return radius_graph(x, float(r), batch, None, int(max_num_neighbors))[0]

    dimenet.radius_graph = pyg_radius_graph
    schnet.radius_graph = pyg_radius_graph
    dimenet.triplets = dimenet_triplets


def dimenet_triplets(edge_index, num_nodes: int):
    """DimeNet's triplets (k->j->i, k != i) without torch_sparse; same outputs up to triplet order."""
    row, col = edge_index                                   # j -> i
    order = torch.argsort(col, stable=True)                  # edges grouped by target
    deg = torch.bincount(col, minlength=num_nodes)
    first = torch.cumsum(deg, 0) - deg
    count = deg[row]                                         # edges k->j for each edge j->i
    idx_ji = torch.repeat_interleave(torch.arange(row.size(0), device=row.device), count)
    rank = torch.arange(idx_ji.size(0), device=row.device) - (torch.cumsum(count, 0) - count)[idx_ji]
    idx_kj = order[first[row[idx_ji]] + rank]
    idx_i, idx_j, idx_k = col[idx_ji], row[idx_ji], row[idx_kj]
    mask = idx_i != idx_k
    return col, row, idx_i[mask], idx_j[mask], idx_k[mask], idx_kj[mask], idx_ji[mask]


class PyGAtomwise(torch.nn.Module):
    """Per-atom (energy share, charge) outputs of a PyG model that normally sums them per graph.

    Forward hooks collect the per-atom outputs of the given blocks (DimeNet++'s
    output blocks, SchNet's last linear layer); the model itself is unchanged.
    """

    def __init__(self, model: torch.nn.Module, blocks):
        super().__init__()
        self.model = model
        self._outputs = []
        for block in blocks:
            block.register_forward_hook(lambda module, args, out: self._outputs.append(out))

    def forward(self, z, pos, batch, bonds):
        self._outputs = []
        self.model(z, pos, batch)
        scalars = torch.stack(self._outputs).sum(dim=0)
        return scalars, torch.zeros_like(pos)


def build_model(name: str, hidden: int, layers: int, cutoff: float):
    from openmm_cgml.evaluation.properties import PaxNetAtomwise, PropertyModel

    if name == "paxnet":
        atomwise = PaxNetAtomwise(hidden=hidden, n_layers=layers, cutoff=cutoff, max_num_neighbors=32, n_rbf=32)
    elif name == "dimenetpp":
        from torch_geometric.nn.models import DimeNetPlusPlus

        use_plain_torch_graph_ops()
        net = DimeNetPlusPlus(hidden_channels=hidden, out_channels=2, num_blocks=layers, int_emb_size=hidden // 2,
                              basis_emb_size=8, out_emb_channels=2 * hidden, num_spherical=7, num_radial=6,
                              cutoff=cutoff, max_num_neighbors=32)
        atomwise = PyGAtomwise(net, net.output_blocks)
    elif name == "schnet":
        from torch_geometric.nn.models import SchNet

        use_plain_torch_graph_ops()
        net = SchNet(hidden_channels=hidden, num_filters=hidden, num_interactions=layers, num_gaussians=50,
                     cutoff=cutoff, max_num_neighbors=32)
        net.lin2 = torch.nn.Linear(hidden // 2, 2)      # two per-atom outputs instead of one
        torch.nn.init.zeros_(net.lin2.weight)           # start at the mean, as the other two models
        torch.nn.init.zeros_(net.lin2.bias)
        atomwise = PyGAtomwise(net, [net.lin2])
    else:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return PropertyModel(atomwise)


# ------------------------------------------------------------------ memory
def _proc_status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")    # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


# ------------------------------------------------------------------ one model (subprocess)
def worker(args) -> dict:
    from openmm_cgml.evaluation.properties import PropertyData, evaluate, train

    torch.set_num_threads(args.threads)
    data = PropertyData.load(args.data)
    train_idx, test_idx = data.split(args.test_trajectories)
    torch.manual_seed(args.seed)
    model = build_model(args.worker, args.hidden, args.layers, args.cutoff)
    cuda = args.device == "cuda"
    if cuda:
        model = model.cuda()
        torch.cuda.reset_peak_memory_stats()
    rss_before = _proc_status_kb("VmRSS")
    reset = _reset_peak_rss()
    history = train(model, data, train_idx, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    seed=args.seed, max_seconds=args.max_seconds_per_model,
                    log=(lambda msg: print(f"[{args.worker}] {msg}", file=sys.stderr)) if args.verbose else None)
    metrics = evaluate(model, data, test_idx, batch_size=args.batch_size)
    if cuda:
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = (_proc_status_kb("VmHWM") - rss_before) / 1024 if reset else float("nan")
    return {**metrics, "peak_mem_mb": peak_mb, "train_ms_per_batch": history["train_ms_per_batch"],
            "epochs_done": history["epochs"], "train_steps": history["steps"], "final_train_loss": history["loss"][-1],
            "params": sum(p.numel() for p in model.parameters())}


# ------------------------------------------------------------------ neighbour search timings
def bench_neighbors(threads: int) -> dict:
    from openmm_cgml.nn import radius_graph

    torch.set_num_threads(threads)
    out = {}
    gen = torch.Generator().manual_seed(0)
    for n in (64, 256, 512, 1024, 4096, 16384):
        side = (n / 100.0) ** (1 / 3)                  # water-like 100 atoms/nm^3
        pos = torch.rand(n, 3, generator=gen) * side
        box = torch.eye(3) * side if side >= 1.0 else None
        row = {}
        for method in ("dense", "cell"):
            if method == "dense" and n > 4096:
                continue
            for _ in range(2):
                radius_graph(pos, 0.5, None, box, 128, method)
            t0 = time.perf_counter()
            reps = 5
            for _ in range(reps):
                edges, _ = radius_graph(pos, 0.5, None, box, 128, method)
            row[f"{method}_ms"] = 1000 * (time.perf_counter() - t0) / reps
        row["edges"] = int(edges.size(1))
        if "dense_ms" in row:
            row["cell_over_dense"] = row["cell_ms"] / row["dense_ms"]
        out[str(n)] = row
    return {"radius_graph_cutoff_0.5nm_periodic_when_box_ge_1nm": out}


# Last revision of openmm_cgml/nn before the per-call overhead work: the "before" of --overhead.
BASELINE_REV = "1d6bb39dcc13eb5989c18f8a972a67c5794e75d3"


def _baseline_nn(rev: str, workdir: Path):
    """The openmm_cgml.nn package as of git revision ``rev``, imported as a separate package."""
    import importlib

    root = workdir / f"nn-{rev[:12]}"
    pkg = root / "cgml_nn_baseline"
    pkg.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[1]
    for name in ("__init__.py", "basis.py", "neighbors.py", "paxnet.py"):
        text = subprocess.run(["git", "show", f"{rev}:openmm_cgml/nn/{name}"], cwd=repo, check=True,
                              capture_output=True, text=True).stdout
        (pkg / name).write_text(text.replace("from ..units import", "from openmm_cgml.units import"))
    sys.path.insert(0, str(root))
    return importlib.import_module("cgml_nn_baseline")


def _interleaved_ms(calls: dict, repeats: int) -> dict:
    """Median ms per call of each callable, timed in turn (A, B, A, B, ...) so load hits both alike."""
    for f in calls.values():
        for _ in range(10):
            f()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, f in calls.items():
            t0 = time.perf_counter()
            f()
            times[name].append(1000 * (time.perf_counter() - t0))
    return {name: float(np.median(t)) for name, t in times.items()}


def bench_overhead(threads: int, rev: str, workdir: Path, repeats: int = 300) -> dict:
    """ms per scripted PaxNet call and per exported model step: revision ``rev`` vs this checkout."""
    import openmm_cgml.model.propagator as propagator
    from openmm_cgml.model_file import export_model, load
    from openmm_cgml.nn import PaxNet

    torch.set_num_threads(threads)
    old = _baseline_nn(rev, workdir)
    out = {"baseline_rev": rev}
    for n in (10, 100):
        gen = torch.Generator().manual_seed(n)
        if n <= 20:   # a zig-zag chain, like a coarse-grained peptide (0.38 nm bonds)
            pos = torch.stack([torch.arange(n) * 0.33, (torch.arange(n) % 2) * 0.2, torch.zeros(n)], 1)
            pos = pos + 0.03 * torch.randn(n, 3, generator=gen)
        else:         # a random walk of beads
            steps = torch.randn(n, 3, generator=gen)
            pos = torch.cumsum(0.38 * steps / steps.norm(dim=1, keepdim=True), 0)
        bonds = torch.stack([torch.arange(n - 1), torch.arange(1, n)])
        bonds = torch.cat([bonds, bonds.flip(0)], 1)
        batch = torch.zeros(n, dtype=torch.long)
        k = 4
        # PaxNet alone, as the propagator's Dynamics network is configured by default
        args = (torch.randn(n, k - 1 + 17, generator=gen), torch.randn(n, 3, k - 1, generator=gen), pos, bonds,
                batch, None)
        nets = {}
        for name, cls in (("before", old.PaxNet), ("after", PaxNet)):
            torch.manual_seed(0)
            nets[name] = torch.jit.script(cls(hidden=48, n_layers=2, cutoff=1.0, vector_in=k - 1,
                                              scalar_in=k - 1 + 17).eval())
        with torch.no_grad():
            a, b = nets["before"](*args), nets["after"](*args)
            diff = max(float((a[0] - b[0]).abs().max()), float((a[1] - b[1]).abs().max()))
            ms = _interleaved_ms({name: (lambda f=f: f(*args)) for name, f in nets.items()}, repeats)
        row = {"paxnet_ms_before": ms["before"], "paxnet_ms_after": ms["after"],
               "paxnet_speedup": ms["before"] / ms["after"], "paxnet_max_abs_diff": diff}

        # the whole exported model step (Dynamics PaxNet + sampling [+ refinement])
        steps = {}
        for name, nn_mod in (("before", old), ("after", None)):
            saved = (propagator.PaxNet, propagator.radius_graph, propagator.edge_vectors)
            if nn_mod is not None:
                propagator.PaxNet, propagator.radius_graph, propagator.edge_vectors = (
                    nn_mod.PaxNet, nn_mod.radius_graph, nn_mod.edge_vectors)
            try:
                torch.manual_seed(0)
                masses = torch.zeros(7)
                masses[1], masses[6] = 1.008, 12.011
                model = propagator.CGPropagator(propagator.PropagatorConfig(k=k), masses, accel_std_nm=0.05,
                                                velocity_std_nm=0.08, mass_scale_amu=13.0, model_dt_ps=1.0,
                                                md_steps_per_model_step=500, md_timestep_ps=0.002,
                                                n_beads=n, n_atoms=2 * n).eval()
                steps[name] = load(export_model(model, workdir / f"overhead-{name}-{n}.safetensors"))
            finally:
                propagator.PaxNet, propagator.radius_graph, propagator.edge_vectors = saved
        atom_types = torch.tensor([1 if i % 2 else 6 for i in range(2 * n)])
        fine = torch.stack([torch.arange(2 * n - 1), torch.arange(1, 2 * n)])
        fine = torch.cat([fine, fine.flip(0)], 1)
        features = steps["after"].embed(atom_types, fine, torch.arange(2 * n) // 2, n)
        history = torch.stack([pos + 0.01 * t for t in range(k)])
        box = torch.zeros(3, 3)
        for refine in (False, True):
            noise = torch.randn(steps["after"].noise_draws(refine), n, 3, generator=gen)
            with torch.no_grad():
                a = steps["before"].step(history, features, bonds, batch, box, noise, refine)
                b = steps["after"].step(history, features, bonds, batch, box, noise, refine)
                ms = _interleaved_ms({name: (lambda m=m: m.step(history, features, bonds, batch, box, noise, refine))
                                      for name, m in steps.items()}, repeats // 2)
            tag = "step_refine" if refine else "step"
            row.update({f"{tag}_ms_before": ms["before"], f"{tag}_ms_after": ms["after"],
                        f"{tag}_speedup": ms["before"] / ms["after"],
                        f"{tag}_max_abs_diff_nm": float((a - b).abs().max())})
        out[f"{n}_nodes"] = row
    return {"per_call_overhead_1_thread_median_ms": out}


def hardware(device: str) -> dict:
    info = {"device": device, "cpu_cores": os.cpu_count(), "platform": platform.platform(),
            "torch": torch.__version__, "note": "shared machine: other jobs may run at the same time"}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--epochs", type=int, default=200, help="epochs (an upper bound under a time budget)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--cutoff", type=float, default=0.5, help="nm, global cutoff for all models")
    p.add_argument("--temperatures", default="300,450,600", help="K")
    p.add_argument("--trajectories", type=int, default=3, help="per temperature")
    p.add_argument("--frames", type=int, default=150, help="per trajectory")
    p.add_argument("--stride", type=int, default=50, help="MD steps (1 fs) between frames")
    p.add_argument("--test-trajectories", default=None,
                   help="comma-separated trajectory ids for the test set (default: the last of each temperature)")
    p.add_argument("--max-seconds-per-model", type=float, default=140.0,
                   help="training wall-time budget per model (the same for all); 0 = train all --epochs")
    p.add_argument("--workdir", default="/tmp/cgml-bench-backbone", help="MD trajectories and the data cache")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per model (1: robust on a shared machine; >1 oversubscribes easily)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--neighbors", action="store_true", help="time radius_graph (dense vs cell) instead")
    p.add_argument("--overhead", action="store_true",
                   help="time one PaxNet call and one exported model step on 10 and 100 beads, "
                        "this checkout vs --baseline-rev (interleaved medians)")
    p.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision of openmm_cgml/nn for --overhead")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.max_seconds_per_model is not None and args.max_seconds_per_model <= 0:
        args.max_seconds_per_model = None
    args.temperature_list = [float(t) for t in args.temperatures.split(",")]
    if args.test_trajectories is None:
        args.test_trajectories = [(k + 1) * args.trajectories - 1 for k in range(len(args.temperature_list))]
    elif isinstance(args.test_trajectories, str):
        args.test_trajectories = [int(t) for t in args.test_trajectories.split(",")]
    return args


def property_data(args) -> tuple[Path, float]:
    """The sampled property data set (cached in --workdir): its file, and the seconds sampling took."""
    from openmm_cgml.evaluation.properties import sample_configurations

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cache = workdir / (f"ala2-T{args.temperatures.replace(',', '-')}-n{args.trajectories}-f{args.frames}"
                       f"-s{args.stride}-seed{args.seed}.npz")
    t0 = time.perf_counter()
    if not cache.exists():
        data = sample_configurations(workdir / cache.stem, temperatures=args.temperature_list,
                                     trajectories_per_temperature=args.trajectories, frames=args.frames,
                                     stride=args.stride, seed=args.seed)
        data.save(cache)
    return cache, time.perf_counter() - t0


def run_worker(name: str, cache: Path, args) -> dict:
    """One model trained and tested in its own subprocess (so its peak memory is its own)."""
    cmd = [sys.executable, __file__, "--worker", name, "--data", str(cache),
           "--test-trajectories", ",".join(map(str, args.test_trajectories))]
    for key in ("epochs", "batch_size", "lr", "hidden", "layers", "cutoff", "device", "threads", "seed"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    if args.max_seconds_per_model is not None:
        cmd += ["--max-seconds-per-model", str(args.max_seconds_per_model)]
    if args.verbose:
        cmd.append("--verbose")
    t_model = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    if args.verbose:
        print(done.stderr, file=sys.stderr, end="")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t_model
    return result


def ratios(results: dict) -> dict:
    """PaxNet's numbers over each baseline's."""
    out = {}
    if "paxnet" in results and "error" not in results["paxnet"]:
        for base in ("dimenetpp", "schnet"):
            if base in results and "error" not in results[base]:
                out[f"paxnet_over_{base}"] = {
                    key: results["paxnet"][key] / results[base][key]
                    for key in ("energy_mae", "force_mae", "dipole_mae", "peak_mem_mb", "train_ms_per_batch",
                                "infer_ms_per_batch") if results[base][key]}
    return out


def run_config(args, n_train: int, n_test: int, sampling_s: float) -> dict:
    return {"system": "alanine-dipeptide (22 atoms), amber14 + GBn2, no constraints, Langevin 1 fs",
            "temperatures_K": args.temperature_list, "trajectories_per_temperature": args.trajectories,
            "frames_per_trajectory": args.frames, "frame_stride_steps": args.stride,
            "train_frames": int(n_train), "test_frames": int(n_test),
            "test_trajectories": args.test_trajectories, "max_epochs": args.epochs,
            "train_seconds_budget_per_model": args.max_seconds_per_model,
            "batch_size": args.batch_size, "lr": args.lr, "hidden": args.hidden, "layers": args.layers,
            "cutoff_nm": args.cutoff, "threads": args.threads, "sampling_s": sampling_s,
            "units": {"energy_mae": "kJ/mol", "force_mae": "kJ/mol/nm (per component)",
                      "dipole_mae": "Debye (per component)", "peak_mem_mb": "MiB (CPU: peak RSS growth)"},
            "loss": "MSE of energy, forces, dipole, each divided by its training std, weights 1:1:1"}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.neighbors:
        print(json.dumps({"hardware": hardware("cpu"), **bench_neighbors(args.threads)}, indent=2))
        return
    if args.overhead:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        print(json.dumps({"hardware": hardware("cpu"), **bench_overhead(args.threads, args.baseline_rev, workdir)},
                         indent=2))
        return
    from openmm_cgml.evaluation.properties import PropertyData

    cache, sampling_s = property_data(args)
    train_idx, test_idx = PropertyData.load(cache).split(args.test_trajectories)
    results = {name: run_worker(name, cache, args) for name in args.models.split(",")}
    report = {**results, "ratios": ratios(results), "hardware": hardware(args.device),
              "config": run_config(args, len(train_idx), len(test_idx), sampling_s)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
