"""The fidelity benchmark (``cgml benchmark``), defined by a versioned YAML file.

    cgml benchmark polymer --scale small --out runs/bench-polymer [--model polymer-chain]

The definition (``openmm_cgml/benchmarks/NAME.yaml``) fixes the sequences of
each split (train, validation, test at the training length, and a longer
test set for length transfer), the reference lengths, the model step and the
rollout lengths. A run:

1. designs the sequences (disjoint splits) and runs, or finds in the cache,
   the reference MD: two independent replicas (A, B) of every test chain;
2. fits the composition baseline (mean Rg against solvophobic fraction and
   log length) on the training chains, and a stronger one that also knows
   the blockiness of the arrangement;
3. chooses the model's inference settings (Score refinement levels) on the
   validation chains only;
4. rolls out every test chain, with the hard-core correction off (raw
   collisions) and again with it on (how often it fires);
5. computes every metric for the rollout against A (the model) and for B
   against A (the ceiling), with 95% bootstrap intervals;
6. times fine MD and the rollout interleaved in this process;
7. writes ``fidelity.json`` and a report with plots.

Test references are read only in steps 4-7.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from openmm_cgml.evaluation import fidelity
from openmm_cgml.evaluation import sequences as seqs
from openmm_cgml.evaluation.references import ReferenceBatch, chain_atoms, chain_system_params, run_batches
from openmm_cgml.evaluation.statistics import LinearBaseline, r2_scores
from openmm_cgml.io import jsonable, read_yaml, write_atomic
from openmm_cgml.units import is_number

__all__ = ["BENCHMARKS_DIR", "available", "load_definition", "design_splits", "run_benchmark", "frames_per_step",
           "validation_objective", "cached_split"]

BENCHMARKS_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
# a definition's ``kind`` (default polymer) -> the shipped file whose shape it must have
KINDS = {"polymer": "polymer.yaml", "peptide": "peptide.yaml"}
DEFAULT_MODELS = {"polymer": "polymer-chain", "peptide": "alanine-dipeptide"}
SPLITS = ("test", "test_long", "validation", "train")  # design order: the test sets get first pick


def available() -> list[str]:
    return sorted(p.stem for p in BENCHMARKS_DIR.glob("*.yaml"))


def load_definition(name_or_path, scale: str) -> dict:
    """The benchmark definition with the chosen scale's settings merged in (``ValueError`` if unknown)."""
    path = Path(name_or_path)
    if not path.is_file():
        path = BENCHMARKS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown benchmark {name_or_path!r}; available: {', '.join(available())}")
    definition = read_yaml(path, "benchmark definition")
    scales = definition.get("scales")
    if not isinstance(scales, dict):
        raise ValueError(f"{path}: 'scales' must be a mapping of scale name -> settings, got {scales!r:.60}")
    if scale not in scales:
        raise ValueError(f"{path}: no scale {scale!r}; scales: {', '.join(map(str, scales))}")
    if not isinstance(scales[scale], dict):
        raise ValueError(f"{path}: scale {scale!r} must be a mapping of settings, got {scales[scale]!r:.60}")
    merged = {key: value for key, value in definition.items() if key != "scales"}
    merged.update(scales[scale])
    kind = merged.setdefault("kind", "polymer")
    if kind not in KINDS:
        raise ValueError(f"{path}: kind must be one of {sorted(KINDS)}, got {kind!r:.60}")
    _check_like(merged, _template(kind), str(path), "")
    merged.update(scale=scale, file=str(path))
    return merged


# numbers that may be 0; every other number of a definition must be > 0
_MAY_BE_ZERO = {"seed", "equilibration_steps"}


def _template(kind: str) -> dict:
    """The shipped benchmark of ``kind`` at its small scale: what every definition of that kind must look like."""
    shipped = read_yaml(BENCHMARKS_DIR / KINDS[kind], "benchmark definition")
    template = {key: value for key, value in shipped.items() if key != "scales"}
    template.update(shipped["scales"]["small"])
    template.setdefault("kind", kind)
    return template


def _check_like(values, template, path: str, where: str) -> None:
    """Raise ``ValueError`` naming ``path`` and the key where ``values`` does not have the shape of ``template``.

    Mappings must hold the same keys (an empty template mapping takes any, e.g. ``system_params``);
    numbers must be finite and > 0 (>= 0 for seeds and equilibration steps); lists must be lists.
    """
    name = where or "the definition"
    if isinstance(template, dict):
        if not isinstance(values, dict):
            raise ValueError(f"{path}: {name} must be a mapping, got {values!r:.60}")
        if not template:
            return
        missing, unknown = sorted(set(template) - set(values)), sorted(set(values) - set(template))
        if missing or unknown:
            raise ValueError(f"{path}: {name} " + (f"lacks {missing}" if missing else f"has unknown key(s) {unknown}")
                             + f"; expected keys: {sorted(template)}")
        for key in template:
            _check_like(values[key], template[key], path, f"{where}.{key}" if where else key)
    elif isinstance(template, list):
        if not isinstance(values, list):
            raise ValueError(f"{path}: {name} must be a list, got {values!r:.60}")
    elif isinstance(template, bool) or isinstance(template, str):
        if type(values) is not type(template):
            raise ValueError(f"{path}: {name} must be a {type(template).__name__}, got {values!r:.60}")
    elif isinstance(template, (int, float)):
        if not is_number(values) or not math.isfinite(values):
            raise ValueError(f"{path}: {name} must be a finite number, got {values!r:.60}")
        if values < 0 or (values == 0 and where.rsplit(".", 1)[-1] not in _MAY_BE_ZERO):
            raise ValueError(f"{path}: {name} must be > 0, got {values!r}")


def design_splits(definition: dict) -> dict:
    """``{split: [sequence, ...]}`` for the four splits, disjoint up to reversal."""
    used: set[str] = set()
    designed = {}
    for split in SPLITS:
        spec = definition[split]
        if split == "train":
            designed[split] = seqs.uniform(spec["n"], spec["lengths"], spec["seed"], used)
        else:
            designed[split] = seqs.stratified(spec["n"], spec["length"], spec["seed"], used)
    return designed


def _batches(definition: dict, designed: dict, params: dict) -> list[ReferenceBatch]:
    """The reference MD: replicas A and B of the test sets, A of validation and training."""
    dt = float(params["timestep_ps"])
    stride = int(definition["frame_stride"])
    per_context = int(definition["chains_per_context"])
    frozen = ReferenceBatch.freeze(params)
    batches = []
    for split, replicas in (("test", 2), ("test_long", 2), ("validation", 1), ("train", 1)):
        frames = int(round(definition[split]["reference_ns"] * 1000.0 / (stride * dt))) + 1
        chains = designed[split]
        for replica in range(replicas):
            for start in range(0, len(chains), per_context):
                seed = 1000 * (SPLITS.index(split) + 1) + 100 * replica + start // per_context
                batches.append(ReferenceBatch(split, replica, tuple(chains[start:start + per_context]), frames,
                                              stride, int(definition["equilibration_steps"]), seed, frozen))
    return batches


class _Split:
    """Bead trajectories of one split and replica: chains, their mappings, their single-chain systems."""

    def __init__(self, chains, mappings, references):
        self.chains, self.mappings, self.references = chains, mappings, references


def _bead_chains(model, definition, batches, paths, split, replica) -> _Split:
    from openmm_cgml import systems
    from openmm_cgml.openmm.bead_system import molecule_mapping

    chains, mappings, references = [], [], []
    for batch in (b for b in batches if b.split == split and b.replica == replica):
        atoms, interval = chain_atoms(paths[batch], batch.sequences)
        for sequence, positions in zip(batch.sequences, atoms):
            reference = systems.load(definition["system"], sequence=sequence, **definition["system_params"])
            mapping = molecule_mapping(model, reference.topology, reference.atom_types)
            chains.append(fidelity.Chain(sequence, mapping.bead_positions(positions), interval,
                                         np.asarray(mapping.bead_masses),
                                         np.asarray(mapping.coarse_bonds, dtype=np.int64).reshape(-1, 2),
                                         _bead_kinds(mapping), seqs.features(sequence)))
            mappings.append(mapping)
            references.append(reference)
    return _Split(chains, mappings, references)


def _bead_kinds(mapping) -> np.ndarray:
    """An integer per bead naming its kind, the same in every molecule: its sorted atom types, in base 64."""
    types = np.asarray(mapping.atom_types, dtype=np.int64)
    owner = np.asarray(mapping.bead_of_atom)
    labels = [sum((t + 1) * 64 ** i for i, t in enumerate(sorted(types[owner == bead].tolist())))
              for bead in range(mapping.n_beads)]
    return np.asarray(labels, dtype=np.int64)


def frames_per_step(model_dt: float, interval: float) -> int:
    """Reference frames (``interval`` ps apart) per model step of ``model_dt`` ps; ``ValueError`` unless whole."""
    lag = model_dt / interval
    if lag < 1 - 1e-6 or abs(lag - round(lag)) > 1e-6:
        raise ValueError(f"the model step ({model_dt} ps) must be a whole number of reference frames "
                         f"({interval} ps apart)")
    return int(round(lag))


def _start(chain: fidelity.Chain, k: int, lag: int) -> np.ndarray:
    return chain.positions[: (k - 1) * lag + 1: lag]


def _rollout_chains(split: _Split, frames: list[np.ndarray], model_dt: float) -> list[fidelity.Chain]:
    return [fidelity.Chain(c.name, f, model_dt, c.masses, c.bonds, c.bead_types, c.features)
            for c, f in zip(split.chains, frames)]


def validation_objective(model, definition, validation: _Split, references: list, model_dt: float, refine: bool,
                         seed: int = 7) -> float:
    """The score that chooses inference settings (and, in configs' rules, models): the mean over the validation
    chains of Rg JS + bond-length JS, rollouts of ``tune_model_steps`` from each chain's start (``seed`` 7: the
    benchmark's own); a chain whose rollout ends before 10 frames scores 2. ``references``: the chains'
    :func:`fidelity.observe` (``n_boot=10``)."""
    from openmm_cgml.evaluation.rollouts import roll_out

    lag = frames_per_step(model_dt, validation.chains[0].dt_ps)
    starts = [_start(c, model.k, lag) for c in validation.chains]
    result = roll_out(model, validation.mappings, starts, int(definition["tune_model_steps"]), seed=seed,
                      refine=refine)
    total = 0.0
    for ref, frames, chain in zip(references, result["frames"], validation.chains):
        if len(frames) < 10:
            total += 2.0
            continue
        rolled = fidelity.Chain(chain.name, frames, model_dt, chain.masses, chain.bonds, chain.bead_types)
        roll = fidelity.observe(rolled, n_boot=10)
        total += fidelity._js(ref.rg, roll.rg, 50) + fidelity._js(ref.bonds, roll.bonds, 50)
    return total / len(validation.chains)


def _tune(model, definition, validation: _Split, model_dt: float, log) -> dict:
    """Choose the Score refinement levels on the validation chains: the lowest :func:`validation_objective`."""
    from openmm_cgml.evaluation.rollouts import choose_refinement

    references = [fidelity.observe(c, n_boot=10) for c in validation.chains]

    def score(refine: bool) -> float:
        return validation_objective(model, definition, validation, references, model_dt, refine)

    chosen = choose_refinement(model, definition["refine_candidates"], score, "mean of Rg JS + bond JS", log)
    return {"refine_sigmas": {**chosen, "model_steps": int(definition["tune_model_steps"])}}


def cached_split(model, definition: dict, split: str, cache, replica: int = 0, log=print) -> _Split:
    """The bead trajectories of one split and replica of a polymer benchmark for ``model``'s mapping, from the
    reference cache (the split's batches are run first if missing)."""
    params = chain_system_params(definition["system"], definition["system_params"])
    batches = [b for b in _batches(definition, design_splits(definition), params)
               if b.split == split and b.replica == replica]
    paths = run_batches(batches, cache, workers=1, log=log)
    return _bead_chains(model, definition, batches, paths, split, replica)


def _split_half_r(chains: list[fidelity.Chain]) -> float:
    from openmm_cgml.evaluation.dynamics import rg2_relaxation

    first, second = [], []
    for chain in chains:
        half = chain.positions.shape[0] // 2
        first.append(rg2_relaxation(chain.positions[:half], chain.masses, chain.dt_ps)["integrated"])
        second.append(rg2_relaxation(chain.positions[half:], chain.masses, chain.dt_ps)["integrated"])
    return float(np.corrcoef(np.log(first), np.log(second))[0, 1])


def _stability(rollouts: list[fidelity.Chain], references: list[fidelity.Chain], unstable: dict,
               factor: float) -> dict:
    from openmm_cgml.evaluation import analysis

    blown = []
    for index, (roll, ref) in enumerate(zip(rollouts, references)):
        if index in unstable:
            continue
        limit = factor * analysis.radius_of_gyration(ref.positions, ref.masses).max()
        if analysis.radius_of_gyration(roll.positions, roll.masses).max() > limit:
            blown.append(index)
    return {"nan": sorted(int(i) for i in unstable), "blown_up": blown,
            "unstable_at_model_step": {str(int(k)): int(v) for k, v in unstable.items()}}


COMPOSITION = ("solvophobic_fraction", "log_length")  # what the chain is made of, not how it is arranged


class _Baselines:
    """Least-squares lines of mean Rg fitted on the training chains: on composition, and on every sequence feature."""

    def __init__(self, train: _Split):
        features = np.stack([c.features for c in train.chains])
        mean_rg = [np.mean(fidelity.analysis.radius_of_gyration(c.positions, c.masses)) for c in train.chains]
        self.columns = [seqs.FEATURE_NAMES.index(name) for name in COMPOSITION]
        self.composition = LinearBaseline(COMPOSITION).fit(features[:, self.columns], mean_rg)
        self.sequence = LinearBaseline(seqs.FEATURE_NAMES).fit(features, mean_rg)

    def predict(self, features) -> np.ndarray:
        """The composition baseline's mean Rg (nm) for chains with these sequence features."""
        return self.composition.predict(np.asarray(features)[:, self.columns])

    def annotate(self, metrics: dict, truth: np.ndarray, features, prefix: str = "") -> None:
        """Add the all-feature baseline's R^2 and r^2 beside the composition baseline's."""
        R2, r2 = r2_scores(truth, self.sequence.predict(features))
        metrics[f"{prefix}rg_R2"]["baseline_sequence_features"] = R2
        metrics[f"{prefix}rg_r2"]["baseline_sequence_features"] = r2

    def to_dict(self) -> dict:
        return {"composition": self.composition.to_dict(), "sequence_features": self.sequence.to_dict(),
                "fitted_on": "train"}


def _hard_core_block(model, test_sets, rollout_on: dict, reference_chains, n_steps, model_dt) -> dict:
    limits = model.min_distances
    chains_on = [fidelity.Chain(c.name, f, model_dt, c.masses, c.bonds, c.bead_types)
                 for c, f in zip(reference_chains, rollout_on["frames"])]
    return {
        "hard_core_rate": rollout_on["hard_core_events"] / max(rollout_on["bead_steps"], 1),
        "at_limit_fraction": {
            "model": fidelity.at_limit_fraction(chains_on, limits["bonded"], limits["nonbonded"]),
            "reference": fidelity.at_limit_fraction(reference_chains, limits["bonded"], limits["nonbonded"]),
        },
        "hard_core_limits_nm": limits, "hard_core_model_steps": int(n_steps),
    }


def run_benchmark(name: str, scale: str, out, model=None, cache=None, workers: int | None = None,
                  log=print, overwrite: bool = False, platform: str = "CPU") -> dict:
    """Run the benchmark and write ``out/fidelity.json`` and ``out/report.md``; returns the JSON content.

    ``model`` defaults to the shipped model of the benchmark's kind (:data:`DEFAULT_MODELS`). A ``peptide``
    definition runs :func:`openmm_cgml.evaluation.peptide.run_peptide_benchmark`.
    """
    from openmm_cgml.model_file import load

    started = time.perf_counter()
    definition = load_definition(name, scale)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output folder {out} is a file, not a folder")
    if (out / "fidelity.json").exists() and not overwrite:
        raise FileExistsError(f"{out / 'fidelity.json'} exists; pass --overwrite to replace it")
    if workers is not None and workers < 1:
        raise ValueError(f"workers (--workers) must be >= 1, got {workers}")
    _check_platform(platform)
    model = DEFAULT_MODELS[definition["kind"]] if model is None else model
    cg_model = load(model)   # before hours of reference MD: a bad model file fails now
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache) if cache else out / "references"
    workers = workers or max(1, min(2, os.cpu_count() or 1))
    if definition["kind"] == "peptide":
        from openmm_cgml.evaluation.peptide import run_peptide_benchmark

        return run_peptide_benchmark(definition, out, cg_model, model, cache, workers, log, platform)

    designed = design_splits(definition)
    params = chain_system_params(definition["system"], definition["system_params"])
    batches = _batches(definition, designed, params)
    log(f"[1/6] reference MD ({definition['name']} v{definition['version']}, scale {scale})")
    md_started = time.perf_counter()
    paths = run_batches(batches, cache, workers=workers, log=log, platform=platform)
    md_seconds = time.perf_counter() - md_started

    import torch

    torch.set_num_threads(1)
    model_dt = float(cg_model.model_timestep.value_in_unit(cg_model.model_timestep.unit))
    log("[2/6] baseline on the training chains; inference settings on the validation chains")
    splits = {(s, r): _bead_chains(cg_model, definition, batches, paths, s, r)
              for s, r in (("train", 0), ("validation", 0))}
    baseline = _Baselines(splits[("train", 0)])
    choices = _tune(cg_model, definition, splits[("validation", 0)], model_dt, log)

    log("[3/6] test rollouts (hard core off, then on)")
    for key in (("test", 0), ("test", 1), ("test_long", 0), ("test_long", 1)):
        splits[key] = _bead_chains(cg_model, definition, batches, paths, *key)
    benchmark_dt = int(definition["model_step_md_steps"]) * float(params["timestep_ps"])
    result = _evaluate(cg_model, definition, splits, baseline, model_dt, benchmark_dt, log)
    log("[6/6] interleaved timing")
    test_a = splits[("test", 0)]
    from openmm_cgml.evaluation.rollouts import interleaved_speedup

    timing = definition["timing"]
    lag = frames_per_step(model_dt, test_a.chains[0].dt_ps)
    speedup = interleaved_speedup(test_a.references[0], cg_model, test_a.mappings[0],
                                  _start(test_a.chains[0], cg_model.k, lag),
                                  rounds=timing["rounds"], md_steps=timing["md_steps"],
                                  model_steps=timing["model_steps"])
    document = _document(definition, designed, cg_model, model, choices, baseline, result, speedup,
                         md_seconds, time.perf_counter() - started)
    write_atomic(out / "fidelity.json", json.dumps(jsonable(document), indent=1))
    from openmm_cgml.evaluation.fidelity_report import write_report

    write_report(document, result["plots"], out)
    log(f"      wrote {out / 'fidelity.json'} and {out / 'report.md'}")
    return jsonable(document)


def _check_platform(name: str) -> None:
    """``ValueError`` naming an OpenMM platform this machine does not have (the reference MD would fail later)."""
    import openmm

    names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    if name not in names:
        raise ValueError(f"platform (--platform) {name!r} is not available here; available: {', '.join(names)}")


def _tau_span(tau_ps: np.ndarray, step_ps: float) -> dict:
    return {"min": float(tau_ps.min() / step_ps), "median": float(np.median(tau_ps) / step_ps),
            "max": float(tau_ps.max() / step_ps), "model_step_ps": float(step_ps)}


def _evaluate(model, definition, splits, baseline, model_dt, benchmark_dt, log) -> dict:
    """Rollouts of both test sets, then every metric; returns the metrics and what the plots need."""
    test_a, test_b = splits[("test", 0)], splits[("test", 1)]
    long_a, long_b = splits[("test_long", 0)], splits[("test_long", 1)]
    everything = test_a.chains + long_a.chains
    mappings = test_a.mappings + long_a.mappings
    lag = frames_per_step(model_dt, everything[0].dt_ps)
    starts = [_start(c, model.k, lag) for c in everything]
    reference_ps = max(definition["test"]["reference_ns"], definition["test_long"]["reference_ns"]) * 1000.0
    n_steps = max(int(definition["rollout_min_model_steps"]), int(math.ceil(reference_ps / model_dt)))
    runs = _test_rollouts(model, mappings, starts, n_steps, log)
    off, on = runs["model"], runs["hard_core"]
    rolled = _rollout_chains(_Split(everything, mappings, None), off["frames"], model_dt)
    raw = rolled if runs["raw"] is off else _rollout_chains(_Split(everything, mappings, None),
                                                               runs["raw"]["frames"], model_dt)
    stability = _stability(rolled, everything, off["unstable"], float(definition["blow_up_rg_factor"]))
    raw_stability = _stability(raw, everything, runs["raw"]["unstable"], float(definition["blow_up_rg_factor"]))
    usable = _long_enough(rolled)
    n_test = len(test_a.chains)
    keep = [i for i in usable if i < n_test]
    keep_long = [i - n_test for i in usable if i >= n_test]

    log("[4/6] observables and metrics")
    n_boot = int(definition["bootstrap"])
    obs = {name: [fidelity.observe(c, n_boot=n_boot, seed=i) for i, c in enumerate(chains)]
           for name, chains in (("A", test_a.chains), ("B", test_b.chains), ("model", rolled[:n_test]))}
    pick = {name: [values[i] for i in keep] for name, values in obs.items()}
    features = np.stack([c.features for c in test_a.chains])[keep]
    metrics = fidelity.across_chains(pick["A"], pick["B"], pick["model"], baseline.predict(features), n_boot)
    baseline.annotate(metrics, np.array([o.rg.mean() for o in pick["A"]]), features)
    distributions, per_chain = fidelity.distribution_metrics(pick["A"], pick["B"], pick["model"],
                                                             int(definition["js_bins"]),
                                                             float(definition["pair_cutoff_nm"]), n_boot)
    metrics.update(distributions)
    long_obs = {name: [fidelity.observe(chains[i], n_boot=n_boot, seed=i) for i in keep_long]
                for name, chains in (("A", long_a.chains), ("B", long_b.chains), ("model", rolled[n_test:]))}
    long_features = np.stack([long_a.chains[i].features for i in keep_long])
    long_metrics = fidelity.across_chains(long_obs["A"], long_obs["B"], long_obs["model"],
                                          baseline.predict(long_features), n_boot, prefix="length_transfer_")
    baseline.annotate(long_metrics, np.array([o.rg.mean() for o in long_obs["A"]]), long_features,
                      prefix="length_transfer_")
    metrics["length_transfer_rg_R2"] = long_metrics["length_transfer_rg_R2"]
    metrics["length_transfer_rg_r2"] = long_metrics["length_transfer_rg_r2"]
    minima = fidelity.type_pair_minima(test_a.chains + test_b.chains + long_a.chains + long_b.chains)
    tau_ps = np.array([o.tau_integrated for o in obs["A"]])
    summary = {
        "metrics": metrics,
        # with every correction off (truncation and hard core): what the learned step does on its own
        "collisions_raw": fidelity.collision_metrics([raw[i] for i in _long_enough(raw)], minima),
        "nan_rollouts": len(stability["nan"]) + len(stability["blown_up"]),
        "stability": dict(stability, model_steps=n_steps, chains=len(everything)),
        "truncation": _truncation_block(model, off, raw_stability),
        "reference_tau_split_half_r": _split_half_r(test_a.chains),
        "reference_tau_replica_r": float(np.corrcoef(np.log([o.tau_integrated for o in obs["A"]]),
                                                     np.log([o.tau_integrated for o in obs["B"]]))[0, 1]),
        # tau(Rg^2) of the references in the benchmark's model step (the design) and in this model's
        "reference_tau_model_steps": _tau_span(tau_ps, benchmark_dt),
        "reference_tau_this_model_steps": _tau_span(tau_ps, model_dt),
        "per_chain": _per_chain(test_a.chains, obs, per_chain, keep),
        "rollout_model_steps": n_steps,
    }
    if on is not None:
        summary.update(_hard_core_block(model, None, on, everything, n_steps, model_dt))
    else:
        summary.update({"hard_core_rate": None, "at_limit_fraction": None})
    summary["plots"] = {"obs": obs, "keep": keep, "test_a": test_a.chains, "rolled": rolled[:n_test]}
    return summary


def _long_enough(rollouts) -> list[int]:
    """Indices of the rollouts with at least 100 frames (an early failure leaves too few to measure)."""
    return [i for i, chain in enumerate(rollouts) if len(chain.positions) >= 100]


def _test_rollouts(model, mappings, starts, n_steps: int, log) -> dict:
    """The test rollouts: ``model`` (the model's own step, hard core off: what the metrics use), ``raw``
    (truncation off too; the same run when the model has none) and ``hard_core`` (on; None without one)."""
    from openmm_cgml.evaluation.rollouts import roll_out

    began = time.perf_counter()
    runs = {"model": roll_out(model, mappings, starts, n_steps, seed=11, hard_core=False)}
    log(f"      {len(mappings)} chains x {n_steps} model steps, hard core off: {time.perf_counter() - began:.0f} s")
    runs["raw"] = runs["model"]
    if model.exclusion_retries > 0:
        runs["raw"] = roll_out(model, mappings, starts, n_steps, seed=11, hard_core=False, exclusion_retries=0)
        log("      and with the truncation off")
    runs["hard_core"] = None
    if max(model.min_distances.values()) > 0:
        runs["hard_core"] = roll_out(model, mappings, starts, n_steps, seed=11, hard_core=True)
    return runs


def _truncation_block(model, rollout: dict, raw_stability: dict) -> dict:
    """How often the truncated step fired in the metric rollouts, and how the step fares without it."""
    redrawn, left = rollout["exclusion_events"]
    steps = max(rollout["molecule_steps"], 1)
    return {"exclusion_retries": model.exclusion_retries, "redraw_rate": redrawn / steps,
            "left_after_retries_rate": left / steps, "molecule_steps": rollout["molecule_steps"],
            "raw_nan_rollouts": len(raw_stability["nan"]) + len(raw_stability["blown_up"]),
            "raw_stability": raw_stability}


def _per_chain(chains, obs, rows, keep) -> list[dict]:
    table = []
    for slot, index in enumerate(keep):
        a, b, m = obs["A"][index], obs["B"][index], obs["model"][index]
        table.append({"sequence": chains[index].name, "features": dict(zip(seqs.FEATURE_NAMES, chains[index].features)),
                      "mean_rg_nm": {"A": a.rg.mean(), "B": b.rg.mean(), "model": m.rg.mean()},
                      "tau_rg2_ps": {"A": a.tau_integrated, "B": b.tau_integrated, "model": m.tau_integrated},
                      "rouse1_ps": {"A": a.rouse_times[0], "B": b.rouse_times[0], "model": m.rouse_times[0]},
                      **rows[slot]})
    return table


def _hardware() -> dict:
    import openmm
    import torch

    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "openmm": openmm.__version__, "torch_threads": torch.get_num_threads()}


def _document(definition, designed, cg_model, model_name, choices, baseline, result, speedup, md_seconds,
              seconds) -> dict:
    sets = {split: len(designed[split]) for split in SPLITS}
    disjoint = len({seqs.canonical(s) for v in designed.values() for s in v}) == sum(sets.values())
    md_steps = int(round(cg_model.model_timestep / cg_model.md_timestep))
    summary = {key: value for key, value in result.items() if key != "plots"}
    return {
        "benchmark": definition["name"], "version": definition["version"], "scale": definition["scale"],
        "n_train": sets["train"], "n_val": sets["validation"], "n_test": sets["test"],
        "n_test_long": sets["test_long"], "splits_disjoint": bool(disjoint), "tuned_on": "validation",
        "reference_tau_split_half_r": summary.pop("reference_tau_split_half_r"),
        **{key: summary.pop(key) for key in ("metrics", "collisions_raw", "hard_core_rate", "at_limit_fraction",
                                             "nan_rollouts")},
        "speedup": speedup,
        "model": {"name": str(model_name), "path": cg_model.path, "model_step_ps": cg_model.model_timestep._value,
                  "md_steps_per_model_step": md_steps, "k": cg_model.k,
                  "benchmark_model_step_md_steps": int(definition["model_step_md_steps"]),
                  "model_step_matches_benchmark": md_steps == int(definition["model_step_md_steps"])},
        "choices": choices, "baseline": baseline.to_dict(), "sequences": designed,
        **summary,
        "timing_s": {"reference_md": md_seconds, "total": seconds},
        "hardware": _hardware(),
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
