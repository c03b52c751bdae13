"""The benchmark's report: a Markdown table of every metric with its interval and ceiling, and plots.

Plots are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas,
so no global backend is switched and nothing needs a display.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from openmm_cgml.evaluation.analysis import autocorrelation
from openmm_cgml.evaluation.statistics import percentile_ci
from openmm_cgml.io import write_atomic

__all__ = ["write_report", "markdown", "readme_table"]

# README rows: metric name -> what it measures (the README table is regenerated from fidelity.json with these)
README_ROWS = {
    "rg_R2": "mean Rg across test chains, R^2 (1 - SS_res/SS_tot)",
    "rg_r2": "mean Rg across test chains, Pearson r^2",
    "logtau_R2": "log tau(Rg^2) across test chains, R^2",
    "logtau_r2": "log tau(Rg^2) across test chains, Pearson r^2",
    "rouse1_ratio": "first Rouse-mode time, rollout / reference (geometric mean)",
    "com_diffusion_ratio": "centre-of-mass diffusion, rollout / reference",
    "bond_js": "bond-length distribution, JS (base 2)",
    "angle_js": "bond-angle distribution, JS",
    "rg_js": "Rg distribution, JS",
    "end_to_end_js": "end-to-end distance distribution, JS",
    "pair_js": "non-bonded pair distances < 1.2 nm, JS",
    "bond_over_max_fraction": "rollout bonds longer than the reference's longest",
    "length_transfer_rg_R2": "mean Rg of 1.5x longer chains, R^2",
}


def _truncation_rows(truncation, chains: int) -> list[str]:
    """The truncated step's table rows: how often it redrew, and the model without it (files before it: none)."""
    if not truncation or not truncation.get("exclusion_retries"):
        return []
    return [f"| truncated step ({truncation['exclusion_retries']} redraws): molecule-steps redrawn; still too close "
            f"| {_fmt(truncation['redraw_rate'])}; {_fmt(truncation['left_after_retries_rate'])} | | |",
            f"| unstable rollouts with the truncation off | {truncation['raw_nan_rollouts']} of {chains} | | |"]


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v, digits) for v in value) + "]"
    value = float(value)
    if value != 0 and (abs(value) < 10 ** -digits or abs(value) >= 10 ** 5):
        return f"{value:.{digits}g}"
    return f"{value:.{digits}f}"


def markdown(document: dict) -> str:
    """The report text: set-up, the metric table (model, 95% CI, ceiling, baseline) and the side numbers."""
    model = document["model"]
    lines = [
        f"# Fidelity benchmark `{document['benchmark']}` v{document['version']}, scale `{document['scale']}`",
        "",
        f"Model `{model['name']}`: model step {_fmt(model['model_step_ps'])} ps "
        f"({model['md_steps_per_model_step']} MD steps; the benchmark's is {model['benchmark_model_step_md_steps']}), "
        f"k = {model['k']}. Splits: {document['n_train']} train, {document['n_val']} validation, "
        f"{document['n_test']} test, {document['n_test_long']} long test chains; disjoint: "
        f"{document['splits_disjoint']}; inference settings tuned on: {document['tuned_on']}.",
        "",
        "Model = rollout against reference replica A; ceiling = replica B against A (the best a model can do "
        "with trajectories this long); baseline = a line of mean Rg on composition (solvophobic fraction, "
        "log length) fitted on the training chains; in brackets, the same with blockiness added.",
        "",
        "| metric | model | 95% CI | ceiling | baseline |",
        "|---|---|---|---|---|",
    ]
    for name, metric in document["metrics"].items():
        lines.append(f"| `{name}` | {_fmt(metric['model'])} | {_fmt(metric['ci95'])} | {_fmt(metric['ceiling'])} "
                     f"| {_fmt(metric.get('baseline'))} |")
    collisions = document["collisions_raw"]
    at_limit = document.get("at_limit_fraction") or {}
    speed = document["speedup"]
    tau = document["reference_tau_model_steps"]
    lines += [
        "",
        "Baselines in brackets (all sequence features): "
        + ", ".join(f"`{name}` {_fmt(metric.get('baseline_sequence_features'))}"
                    for name, metric in document["metrics"].items() if "baseline_sequence_features" in metric) + ".",
        "",
        f"- Raw collisions (hard core off): {collisions['under_1_angstrom']} pair-frames under 1 A, "
        f"{collisions['under_reference_minimum']} under the reference's per-type-pair minimum "
        f"(fraction {_fmt(collisions['under_reference_minimum_fraction'])}).",
        f"- Hard core on: fires {_fmt(document.get('hard_core_rate'))} times per bead-step; pair distances within "
        f"1% of its limit: {_fmt(at_limit.get('model'))} (reference {_fmt(at_limit.get('reference'))}).",
        f"- Unstable rollouts (NaN or blown up): {document['nan_rollouts']} of {document['stability']['chains']}, "
        f"{document['stability']['model_steps']} model steps each.",
        f"- Reference quality: split-half r of log tau(Rg^2) {_fmt(document['reference_tau_split_half_r'])}, "
        f"replica A vs B r {_fmt(document['reference_tau_replica_r'])}; tau(Rg^2) spans "
        f"{_fmt(tau['min'], 1)}-{_fmt(tau['max'], 1)} benchmark model steps of {_fmt(tau['model_step_ps'], 1)} ps "
        f"(median {_fmt(tau['median'], 1)}); {_fmt(document['reference_tau_this_model_steps']['min'], 1)}-"
        f"{_fmt(document['reference_tau_this_model_steps']['max'], 1)} steps of this model.",
        f"- Speed-up in simulated time, interleaved with fine MD ({len(speed['rounds'])} rounds, "
        f"{speed['threads']} thread, {speed['platform']}): median {_fmt(speed['median'], 1)}, min "
        f"{_fmt(speed['min'], 1)}, max {_fmt(speed['max'], 1)}.",
        f"- Inference settings chosen on validation: refine sigmas {document['choices']['refine_sigmas']['value']}.",
        f"- Hardware: {document['hardware']}.",
        "",
        "![mean Rg](rg_parity.png) ![log tau](tau_parity.png)",
        "",
        "![distributions](distributions.png)",
        "",
        "![autocorrelation](acf.png)",
        "",
    ]
    return "\n".join(lines)


def readme_table(document: dict) -> str:
    """The README results table of a ``fidelity.json``: model with its 95% CI, ceiling, baseline."""
    model, speed, hardware = document["model"], document["speedup"], document["hardware"]
    collisions = document["collisions_raw"]
    lines = ["| metric | model [95% CI] | ceiling (MD vs MD) | baseline: composition (+ blockiness) |",
             "|---|---|---|---|"]
    for name, meaning in README_ROWS.items():
        metric = document["metrics"][name]
        baseline = ""
        if "baseline" in metric:
            baseline = f"{_fmt(metric['baseline'])} ({_fmt(metric.get('baseline_sequence_features'))})"
        lines.append(f"| {meaning} | {_fmt(metric['model'])} {_fmt(metric['ci95'])} | {_fmt(metric['ceiling'])} "
                     f"| {baseline} |")
    lines += [
        f"| raw collisions (truncation and hard core off): pair-frames < 1 A; under the reference's per-type minimum "
        f"| {collisions['under_1_angstrom']}; {collisions['under_reference_minimum']} | | |",
        f"| unstable rollouts (NaN or blow-up), {document['stability']['model_steps']} model steps each "
        f"| {document['nan_rollouts']} of {document['stability']['chains']} | | |",
        *_truncation_rows(document.get("truncation"), document['stability']['chains']),
        f"| speed-up in simulated time, interleaved, median (min-max) of {len(speed['rounds'])} rounds "
        f"| {_fmt(speed['median'], 0)} ({_fmt(speed['min'], 0)}-{_fmt(speed['max'], 0)}) | | |",
        "",
        f"`cgml benchmark {document['benchmark']} --scale {document['scale']}` (v{document['version']}) on the model "
        f"`{model['name']}` (model step {_fmt(model['model_step_ps'], 1)} ps = {model['md_steps_per_model_step']} MD "
        f"steps): {document['n_test']} test chains, {document['n_test_long']} longer ones, "
        f"{document['n_val']} validation chains for the inference settings; reference tau split-half r "
        f"{_fmt(document['reference_tau_split_half_r'], 2)}. {hardware['machine']}, {hardware['cpu_count']} cores, "
        f"torch {hardware['torch']} and openmm {hardware['openmm']}, {speed['threads']} thread on {speed['platform']}; "
        f"{_fmt(document['timing_s']['total'] / 60, 0)} min in all.",
    ]
    return "\n".join(lines) + "\n"


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=110, bbox_inches="tight")


def _parity(obs, keep, value, label, path: Path, logarithmic: bool = False) -> None:
    figure = Figure(figsize=(4.2, 4.0))
    axis = figure.add_subplot()
    truth = np.array([value(obs["A"][i]) for i in keep])
    for name, marker in (("model", "o"), ("B", "s")):
        values = np.array([value(obs[name][i]) for i in keep])
        axis.scatter(truth, values, marker=marker, s=18, label="rollout" if name == "model" else "replica B (ceiling)")
    if label.startswith("mean Rg"):
        for i, index in enumerate(keep):
            lo, hi = percentile_ci(obs["model"][index].mean_rg_replicates)
            axis.plot([truth[i], truth[i]], [lo, hi], color="C0", lw=0.8)
    low, high = np.nanmin(truth) * 0.9, np.nanmax(truth) * 1.1
    axis.plot([low, high], [low, high], color="grey", lw=0.8)
    # The ceiling as a band: 95% of replica B's deviations from A (relative ones on a log axis).
    replica = np.array([value(obs["B"][i]) for i in keep])
    line = np.linspace(low, high, 50)
    if logarithmic:
        spread = 1.96 * np.nanstd(np.log(replica / truth))
        axis.fill_between(line, line * np.exp(-spread), line * np.exp(spread), color="grey", alpha=0.2,
                          label="ceiling band")
    else:
        spread = 1.96 * np.nanstd(replica - truth)
        axis.fill_between(line, line - spread, line + spread, color="grey", alpha=0.2, label="ceiling band")
    if logarithmic:
        axis.set_xscale("log")
        axis.set_yscale("log")
    axis.set_xlabel(f"{label}, replica A")
    axis.set_ylabel(label)
    axis.legend(fontsize=7)
    _save(figure, path)


def _distributions(obs, keep, chains, path: Path) -> None:
    shown = keep[:4]
    quantities = (("bonds", "bond length (nm)"), ("angles", "bond angle (rad)"), ("rg", "Rg (nm)"),
                  ("end_to_end", "end-to-end (nm)"), ("pairs", "non-bonded pair distance (nm)"))
    figure = Figure(figsize=(3.0 * len(quantities), 2.4 * len(shown)))
    for row, index in enumerate(shown):
        for column, (attr, label) in enumerate(quantities):
            axis = figure.add_subplot(len(shown), len(quantities), row * len(quantities) + column + 1)
            reference = getattr(obs["A"][index], attr)
            if reference.size == 0:
                continue
            edges = np.linspace(reference.min(), np.percentile(reference, 99.5) * 1.3, 60)
            for name, style in (("A", "-"), ("B", ":"), ("model", "--")):
                values = getattr(obs[name][index], attr)
                axis.hist(values, bins=edges, density=True, histtype="step", linestyle=style, label=name)
            axis.set_xlabel(label, fontsize=7)
            if column == 0:
                axis.set_ylabel(chains[index].name, fontsize=7)
            if row == 0 and column == 0:
                axis.legend(fontsize=6)
    _save(figure, path)


def _acfs(obs, keep, chains, rolled, path: Path) -> None:
    figure = Figure(figsize=(10, 2.6))
    for slot, index in enumerate(keep[:4]):
        axis = figure.add_subplot(1, 4, slot + 1)
        for name, chain_dt, style in (("A", chains[index].dt_ps, "-"), ("B", chains[index].dt_ps, ":"),
                                      ("model", rolled[index].dt_ps, "--")):
            rg2 = obs[name][index].rg ** 2
            acf = autocorrelation(rg2, max_lag=min(len(rg2) - 1, int(200 / chain_dt) + 1))
            axis.plot(np.arange(len(acf)) * chain_dt, acf, style, label=name)
        axis.set_xlim(0, 200)
        axis.set_xlabel("lag (ps)", fontsize=7)
        axis.set_title(chains[index].name, fontsize=8)
        if slot == 0:
            axis.set_ylabel("ACF of Rg^2", fontsize=7)
            axis.legend(fontsize=6)
    _save(figure, path)


def write_report(document: dict, plots: dict, out) -> Path:
    """Write ``report.md`` and its PNGs into ``out``; returns the Markdown path."""
    out = Path(out)
    obs, keep = plots["obs"], plots["keep"]
    _parity(obs, keep, lambda o: o.rg.mean(), "mean Rg (nm)", out / "rg_parity.png")
    _parity(obs, keep, lambda o: o.tau_integrated, "tau(Rg^2) (ps)", out / "tau_parity.png", logarithmic=True)
    _distributions(obs, keep, plots["test_a"], out / "distributions.png")
    _acfs(obs, keep, plots["test_a"], plots["rolled"], out / "acf.png")
    write_atomic(out / "readme_table.md", readme_table(document))
    return write_atomic(out / "report.md", markdown(document))
