"""``cgml evaluate``: compare coarse-grained rollouts with reference MD, and write the report.

Each reference is paired with one rollout (one pair = one system); several
pairs make a set of systems, over which the paper's r^2 of the mean radius
of gyration and of the Rg^2 relaxation time are computed. :func:`evaluate`
writes ``metrics.json`` (all numbers), ``report.md`` and ``report.html``
(the same tables with the PNG plots) into the output directory.

Inputs (read by :mod:`openmm_cgml.evaluation.trajectories`):

* reference: a fine trajectory HDF5 (from ``cgml generate``), coarse-grained
  here with the mapping that fits the model and the molecule (``model``) or
  with a mapping method; or a bead trajectory (DCD/XTC with a topology, or
  mdtraj HDF5).
* rollout: a bead trajectory (DCD/XTC + bead topology PDB, or mdtraj HDF5),
  e.g. from ``CGMLIntegrator`` with a ``DCDReporter``. A rollout of ``R``
  replicas of the reference molecule(s) (``coarse_grained_system(...,
  replicas=R)``) is recognised by its bead count and analysed replica by replica.

The metrics are computed by :mod:`openmm_cgml.evaluation.compare`; this
module draws the plots (on ``matplotlib.figure.Figure`` objects with the Agg
canvas, so no pyplot state or backend switch) and renders the text.
"""
from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import openmm.unit as u

from openmm_cgml.evaluation import analysis
from openmm_cgml.evaluation.compare import across_systems, compare, n_bins, summary
from openmm_cgml.evaluation.trajectories import BeadTrajectory, _fill_from_mapping, load_reference, load_rollout
from openmm_cgml.io import jsonable, write_atomic
from openmm_cgml.units import COLLISION_DISTANCE_NM, NM, PS, strip

__all__ = ["evaluate", "check_settings", "REPORT_FILES", "SETTINGS"]

REPORT_FILES = ("metrics.json", "report.md", "report.html")
REF_STYLE = {"color": "black", "label": "reference"}
ROLL_STYLE = {"color": "tab:red", "label": "rollout", "alpha": 0.8}


# --------------------------------------------------------------------------- plots

def _figure(**kwargs):
    """A ``Figure`` with the Agg canvas attached: drawn and saved without pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path, title: str | None = None) -> None:
    """Title, lay out (tight unless the figure has constrained layout) and write a PNG."""
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    if title is not None:
        figure.suptitle(title)
    if not isinstance(figure.get_layout_engine(), ConstrainedLayoutEngine):
        figure.tight_layout()
    figure.savefig(path, dpi=110)


def _rg_figure(curves: dict, reference: BeadTrajectory, rollout: BeadTrajectory):
    if "rg" not in curves:
        return None
    figure = _figure(figsize=(10, 3.6))
    trace, hist = figure.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    rg = curves["rg"]
    scale, unit = _time_unit(max(reference.simulated_ps, rollout.simulated_ps))
    trace.plot(np.arange(len(rg["reference_trace"])) * reference.frame_interval_ps * scale,
               rg["reference_trace"], lw=0.6, **REF_STYLE)
    trace.plot(np.arange(len(rg["rollout_trace"])) * rollout.frame_interval_ps * scale,
               rg["rollout_trace"], lw=0.6, **ROLL_STYLE)
    trace.set(xlabel=f"time ({unit})", ylabel="Rg (nm)")
    _overlay(hist, rg["distribution"], "Rg (nm)", REF_STYLE, ROLL_STYLE)
    trace.legend()
    return figure


def _acf_figure(curves: dict, reference: BeadTrajectory, rollout: BeadTrajectory):
    if "acf" not in curves:
        return None
    figure = _figure(figsize=(6, 3.6))
    axis = figure.subplots()
    longest = max(curves["acf"]["reference"][0][-1], curves["acf"]["rollout"][0][-1])
    scale, unit = _time_unit(longest)
    for side, style in (("reference", REF_STYLE), ("rollout", ROLL_STYLE)):
        t, acf = curves["acf"][side]
        tau = curves["acf"][f"{side}_tau"]
        label = style["label"] + ("" if tau is None else f", tau = {tau * scale:.3g} {unit}")
        axis.plot(t * scale, acf, **{**style, "label": label})
        if tau is not None:
            axis.axvline(tau * scale, color=style["color"], ls=":", lw=0.8)
    axis.axhline(0, color="grey", lw=0.5)
    axis.set(xlabel=f"lag ({unit})", ylabel="ACF of Rg$^2$")
    axis.legend()
    return figure


_DISTRIBUTION_LABELS = {"bond_length_nm": "bond length (nm)", "angle_rad": "angle (rad)",
                        "dihedral_rad": "dihedral (rad)", "pair_distance_nm": "bead-bead distance (nm)"}


def _distributions_figure(curves: dict, reference: BeadTrajectory, rollout: BeadTrajectory):
    panels = dict(curves.get("structure", {}))
    if "rdf" in curves:
        panels["rdf"] = curves["rdf"]
    if not panels:
        return None
    figure = _figure(figsize=(3.6 * len(panels), 3.3))
    axes = figure.subplots(1, len(panels), squeeze=False)
    for axis, (key, data) in zip(axes[0], panels.items()):
        if key == "rdf":
            axis.plot(data["r"], data["reference"], **REF_STYLE)
            axis.plot(data["r"], data["rollout"], **ROLL_STYLE)
            axis.set(xlabel="r (nm)", ylabel="g(r)")
        else:
            _overlay(axis, data, _DISTRIBUTION_LABELS[key], REF_STYLE, ROLL_STYLE)
    axes[0][0].legend()
    return figure


def _tica_figure(curves: dict, reference: BeadTrajectory, rollout: BeadTrajectory):
    if "tica" not in curves:
        return None
    ref_proj, roll_proj = curves["tica"]
    bins = n_bins(ref_proj, roll_proj, high=50) // 2  # 2-D: 5..25 bins per axis, >= 4 samples per cell
    edges_x = analysis.comparison_edges(ref_proj[:, 0], roll_proj[:, 0], n_bins=bins)
    edges_y = analysis.comparison_edges(ref_proj[:, 1], roll_proj[:, 1], n_bins=bins)
    figure = _figure(figsize=(9, 4.0), layout="constrained")
    axes = figure.subplots(1, 2, sharex=True, sharey=True)
    for axis, proj, title in ((axes[0], ref_proj, "reference"), (axes[1], roll_proj, "rollout")):
        fes = analysis.free_energy_surface(proj, edges_x, edges_y)
        image = axis.pcolormesh(edges_x, edges_y, np.where(np.isfinite(fes), fes, np.nan).T,
                                cmap="viridis", vmin=0, vmax=8)
        axis.set(title=title, xlabel="TIC 1")
    axes[0].set_ylabel("TIC 2")
    figure.colorbar(image, ax=axes, label="free energy (kT)")
    return figure


def _contacts_figure(curves: dict, reference: BeadTrajectory, rollout: BeadTrajectory):
    if "contacts" not in curves:
        return None
    figure = _figure(figsize=(8, 4.0), layout="constrained")
    axes = figure.subplots(1, 2)
    for axis, matrix, title in zip(axes, curves["contacts"], ("reference", "rollout")):
        image = axis.imshow(matrix, vmin=0, vmax=1, cmap="Greys", origin="lower")
        axis.set(title=title, xlabel="bead", ylabel="bead")
    figure.colorbar(image, ax=axes, label="contact frequency")
    return figure


# file suffix, title, drawing function: the plots of one system, in report order
_SYSTEM_PLOTS = (("rg", "radius of gyration", _rg_figure),
                 ("acf", "Rg^2 autocorrelation", _acf_figure),
                 ("distributions", "structural distributions", _distributions_figure),
                 ("tica", "TICA free-energy surfaces", _tica_figure),
                 ("contacts", "contact maps", _contacts_figure))


def _plot_system(index: int, name: str, curves: dict, reference: BeadTrajectory, rollout: BeadTrajectory,
                 out: Path) -> list[tuple[str, str]]:
    """PNG files for one system; returns (title, file name) pairs."""
    written = []
    for suffix, title, draw in _SYSTEM_PLOTS:
        figure = draw(curves, reference, rollout)
        if figure is not None:
            file = f"system{index:02d}_{suffix}.png"
            _save(figure, out / file, f"{name}: {title}")
            written.append((title, file))
    return written


def _time_unit(longest_ps: float) -> tuple[float, str]:
    """Factor from ps and unit name that keep time axes readable (ps below 1 ns, ns above)."""
    return (1.0, "ps") if longest_ps < 1000 else (1e-3, "ns")


def _overlay(axis, dist, xlabel, ref_style, roll_style):
    centres = 0.5 * (dist["edges"][1:] + dist["edges"][:-1])
    axis.plot(centres, dist["reference"], drawstyle="steps-mid", **ref_style)
    axis.plot(centres, dist["rollout"], drawstyle="steps-mid", **roll_style)
    axis.set(xlabel=xlabel, ylabel="density", title=f"JS = {dist['js']:.3f}")


def _plot_scatter(reference, rollout, r2: dict, label: str, file: Path) -> None:
    figure = _figure(figsize=(4.2, 4.0))
    axis = figure.subplots()
    axis.scatter(reference, rollout, color="tab:blue")
    low, high = min(min(reference), min(rollout)), max(max(reference), max(rollout))
    axis.plot([low, high], [low, high], color="grey", lw=0.8, ls="--")
    axis.set(xlabel=f"reference {label}", ylabel=f"rollout {label}",
             title=f"Pearson r$^2$ = {r2['pearson_r2']:.2f}, R$^2$ = {r2['coefficient_of_determination']:.2f}")
    _save(figure, file)


def _plot_across(across: dict, out: Path) -> list[tuple[str, str]]:
    """Rollout against reference over the systems, for mean Rg and relaxation time (where r^2 exists)."""
    written = []
    for key, label in (("rg", "mean Rg (nm)"), ("relaxation_time", "relaxation time (ps)")):
        if isinstance(across.get(key), dict):
            file = f"r2_{key}.png"
            _plot_scatter(across[key]["reference_values"], across[key]["rollout_values"], across[key], label,
                          out / file)
            written.append((f"{label}: rollout vs reference", file))
    return written


# --------------------------------------------------------------------------- report text

def _fmt(value, digits=4):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _tables(result: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) tables shared by the Markdown and HTML reports."""
    tables = []
    tables.append(("Summary", ["metric", "value"], [[k, _fmt(v)] for k, v in result["summary"].items()
                                                    if not isinstance(v, dict)]))
    rows = []
    for system in result["systems"]:
        m = system["metrics"]
        rg = m.get("rg_nm", {})
        tau = m["relaxation_time_ps"]
        rows.append([system["name"],
                     _fmt(rg.get("reference", {}).get("mean")), _fmt(rg.get("rollout", {}).get("mean")),
                     _fmt(tau["reference"]) + (" (lower bound)" if tau["reference_lower_bound"] else ""),
                     _fmt(tau["rollout"]) + (" (lower bound)" if tau["rollout_lower_bound"] else ""),
                     _fmt(m["js_divergence_mean"]),
                     str(m["collisions"]["rollout"]["total"]),
                     _fmt(m["speed"].get("speedup"))])
    tables.append(("Systems", ["system", "Rg ref (nm)", "Rg rollout (nm)", "tau ref (ps)", "tau rollout (ps)",
                               "mean JS", "rollout collisions", "speed-up"], rows))
    observables = sorted({k for s in result["systems"] for k in s["metrics"]["js_divergence"]})
    if observables:
        tables.append(("Jensen-Shannon divergences (base 2: 0 identical, 1 disjoint)", ["system", *observables],
                       [[s["name"], *(_fmt(s["metrics"]["js_divergence"].get(k), 3) for k in observables)]
                        for s in result["systems"]]))
    for key, label in (("rg", "mean Rg"), ("relaxation_time", "Rg^2 relaxation time")):
        r2 = result["across_systems"].get(key)
        if isinstance(r2, dict):
            tables.append((f"Across systems: {label}", ["Pearson r^2 (as Fu et al.)", "R^2 (1 - SS_res/SS_tot)",
                                                        "slope", "intercept", "n"],
                           [[_fmt(r2["pearson_r2"], 3), _fmt(r2["coefficient_of_determination"], 3),
                             _fmt(r2["slope"], 3), _fmt(r2["intercept"], 3), str(r2["n"])]]))
    return tables


def _markdown(result: dict) -> str:
    lines = ["# openmm-cgml evaluation report", "", f"Created {result['created']} by openmm-cgml "
             f"{result['openmm_cgml_version']}. All numbers are in `metrics.json`.", ""]
    for title, header, rows in _tables(result):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    for title, file in result["plots"].get("across_systems", []):
        lines += [f"### {title}", "", f"![{title}]({file})", ""]
    for system in result["systems"]:
        ref, roll = system["reference"], system["rollout"]
        lines += [f"## {system['name']}", "", f"reference: `{ref['path']}` "
                  f"({ref['n_frames']} frames every {_fmt(ref['frame_interval_ps'])} ps); "
                  f"rollout: `{roll['path']}` ({roll['n_frames']} frames every "
                  f"{_fmt(roll['frame_interval_ps'])} ps, {system['metrics']['replicas']} replica(s))", ""]
        lines += [f"- note: {note}" for note in system["metrics"]["notes"]]
        for title, file in system["plots"]:
            lines += ["", f"![{title}]({file})"]
        lines.append("")
    return "\n".join(lines)


def _html(result: dict) -> str:
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>openmm-cgml evaluation</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}</style></head><body>",
             "<h1>openmm-cgml evaluation report</h1>",
             f"<p>Created {esc(result['created'])} by openmm-cgml {esc(result['openmm_cgml_version'])}. "
             "All numbers are in <a href='metrics.json'>metrics.json</a>.</p>"]
    for title, header, rows in _tables(result):
        parts.append(f"<h2>{esc(title)}</h2><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
    for title, file in result["plots"].get("across_systems", []):
        parts.append(f"<h3>{esc(title)}</h3><img src='{esc(file)}' alt='{esc(title)}'>")
    for system in result["systems"]:
        parts.append(f"<h2>{esc(system['name'])}</h2><ul>")
        parts += [f"<li>{esc(note)}</li>" for note in system["metrics"]["notes"]]
        parts.append("</ul>")
        parts += [f"<img src='{esc(file)}' alt='{esc(title)}'>" for title, file in system["plots"]]
    parts.append("</body></html>")
    return "\n".join(parts)




# --------------------------------------------------------------------------- evaluate

# parameter -> (unit, zero allowed): the times, speeds and distances that must be finite and positive (or >= 0)
SETTINGS = {"reference_interval": (PS, False), "rollout_interval": (PS, False),
            "reference_ns_per_day": (u.dimensionless, False), "rollout_ns_per_day": (u.dimensionless, False),
            "tica_lag": (PS, False), "contact_cutoff": (NM, False), "collision_threshold": (NM, True)}


def check_settings(values: dict, label=str) -> dict:
    """The :data:`SETTINGS` in ``values`` that are not None, as plain numbers (ps, ns/day, nm).

    Parameters
    ----------
    values : dict
        Parameter name -> number or Quantity; other keys are ignored.
    label : callable
        What an error calls a parameter (``cgml evaluate`` names its options).

    Raises
    ------
    ValueError
        Naming the parameter and value, for a wrong unit, NaN, inf, a negative value or zero
        (zero is allowed for the collision threshold only).
    """
    numbers = {}
    for name, (unit, zero) in SETTINGS.items():
        if values.get(name) is None:
            continue
        number = strip(values[name], unit, label(name))
        if not (number >= 0 if zero else number > 0):
            raise ValueError(f"{label(name)} must be {'>= 0' if zero else '> 0'}, got {number:g}")
        numbers[name] = number
    return numbers


def _topologies(topology, n_rollouts: int) -> list:
    """One bead topology (or None) per rollout, from None, one path, or a list of one or ``n_rollouts``."""
    topologies = [None] * n_rollouts if topology is None else (
        [topology] * n_rollouts if isinstance(topology, (str, Path)) else list(topology))
    if len(topologies) == 1:
        topologies *= n_rollouts
    if len(topologies) != n_rollouts:
        raise ValueError(f"give one --topology for all rollouts or one per rollout, got {len(topologies)}")
    return topologies


def _load_pair(ref_path, roll_path, topology, model, mapping_method, mapping_params, reference_interval,
               rollout_interval) -> tuple[BeadTrajectory, BeadTrajectory]:
    """Reference and rollout as beads, with masses, bonds and molecules from the mapping when one is known."""
    reference, mapping = load_reference(ref_path, topology=topology, model=model, mapping_method=mapping_method,
                                        mapping_params=mapping_params, frame_interval=reference_interval)
    rollout = load_rollout(roll_path, topology=topology, frame_interval=rollout_interval)
    if mapping is None and model is not None and model.mapping is not None \
            and reference.n_beads % model.mapping.n_beads == 0:
        mapping = model.mapping
        _fill_from_mapping(reference, mapping, reference.n_beads // mapping.n_beads)
    if mapping is not None and rollout.n_beads % mapping.n_beads == 0:
        _fill_from_mapping(rollout, mapping, rollout.n_beads // mapping.n_beads)
    if reference.masses is None or rollout.masses is None:
        reference.masses = rollout.masses = None
        rollout.notes.append("bead masses unknown (no fine reference or model): Rg uses equal masses")
    return reference, rollout


def _describe(trajectory: BeadTrajectory) -> dict:
    return {"path": trajectory.path, "n_frames": trajectory.n_frames, "n_beads": trajectory.n_beads,
            "frame_interval_ps": trajectory.frame_interval_ps, "simulated_ps": trajectory.simulated_ps,
            "periodic": trajectory.box is not None}


def _settings(model, mapping_method, mapping_params, contact_cutoff, collision_threshold) -> dict:
    return {"contact_cutoff_nm": strip(contact_cutoff, NM, "contact_cutoff"),
            "collision_threshold_nm": strip(collision_threshold, NM, "collision_threshold"),
            "js_base": 2, "relaxation_time_method": "integrated ACF to first zero crossing",
            "mapping": None if model is not None else {"method": mapping_method, "params": mapping_params or {}},
            "model": getattr(model, "path", None)}


def _write_report(out: Path, result: dict, loaded: list, plots: bool) -> dict:
    """Plots (if wanted), then metrics.json, report.md and report.html; returns the JSON-able result."""
    out.mkdir(parents=True, exist_ok=True)
    for index, (system, (reference, rollout, curves)) in enumerate(zip(result["systems"], loaded)):
        system["plots"] = _plot_system(index, system["name"], curves, reference, rollout, out) if plots else []
    if plots:
        result["plots"]["across_systems"] += _plot_across(result["across_systems"], out)
    result = jsonable(result)
    write_atomic(out / "metrics.json", json.dumps(result, indent=2))
    write_atomic(out / "report.md", _markdown(result))
    write_atomic(out / "report.html", _html(result))
    return result


def _report_folder(out_dir, overwrite: bool) -> Path:
    """The report folder, if a report may be written there (not a file; no report in it unless ``overwrite``)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"report folder {out} is a file, not a folder")
    existing = [name for name in REPORT_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds a report ({', '.join(existing)}); use --overwrite to replace it")
    return out


def evaluate(references, rollouts, out_dir, *, topology=None, model=None, mapping_method: str = "metis",
             mapping_params: dict | None = None, reference_interval=None, rollout_interval=None,
             reference_ns_per_day=None, rollout_ns_per_day=None, tica_lag=None, contact_cutoff=0.8,
             collision_threshold=COLLISION_DISTANCE_NM, names=None, plots: bool = True,
             overwrite: bool = False) -> dict:
    """Compare each reference with its rollout, write the report into ``out_dir``, return the metrics.

    Nothing is written before every metric is computed; existing reports are
    only replaced with ``overwrite=True``.

    Parameters
    ----------
    references, rollouts : list of str or os.PathLike
        Equal-length lists of paths (pair i = system i): fine HDF5 or bead trajectories, and bead trajectories.
    out_dir : str or os.PathLike
        The report folder.
    topology : str or os.PathLike or list, optional
        One bead PDB for all bead trajectories, or one per rollout.
    model : CGModel or str, optional
        An exported model (file, pretrained name or ``CGModel``); the mapping that fits it and each
        molecule coarse-grains fine references (else ``mapping_method``/``mapping_params``, see
        ``Mapping.build``).
    reference_interval, rollout_interval : Quantity compatible with picoseconds, optional
        Frame intervals when the files do not say.
    reference_ns_per_day, rollout_ns_per_day : float, optional
        Speeds (e.g. from ``analysis.ns_per_day``); both give the speed-up.
    tica_lag : Quantity compatible with picoseconds, optional
        Default the rollout frame interval.
    contact_cutoff : Quantity compatible with nanometers
        Default: 0.8*unit.nanometer.
    collision_threshold : Quantity compatible with nanometers
        Default: 0.1*unit.nanometer (``units.COLLISION_DISTANCE_NM``).
    names : list of str, optional
        System names; default the rollout file stems.
    plots : bool
        Draw the PNG plots.
    overwrite : bool
        Replace an existing report.

    Returns
    -------
    dict
        The content of ``metrics.json``.
    """
    check_settings({"reference_interval": reference_interval, "rollout_interval": rollout_interval,
                    "reference_ns_per_day": reference_ns_per_day, "rollout_ns_per_day": rollout_ns_per_day,
                    "tica_lag": tica_lag, "contact_cutoff": contact_cutoff, "collision_threshold": collision_threshold})
    references, rollouts = [str(p) for p in references], [str(p) for p in rollouts]
    if not references or len(references) != len(rollouts):
        raise ValueError(f"give one rollout per reference: got {len(references)} reference(s) and "
                         f"{len(rollouts)} rollout(s)")
    topologies = _topologies(topology, len(rollouts))
    out = _report_folder(out_dir, overwrite)
    if model is not None and not hasattr(model, "mapping"):
        from openmm_cgml.model_file import load

        model = load(model)
    names = names or [Path(r).stem for r in rollouts]
    systems, loaded = [], []
    for index, (ref_path, roll_path, top) in enumerate(zip(references, rollouts, topologies)):
        reference, rollout = _load_pair(ref_path, roll_path, top, model, mapping_method, mapping_params,
                                        reference_interval, rollout_interval)
        result = compare(reference, rollout, tica_lag=tica_lag, contact_cutoff=contact_cutoff,
                         collision_threshold=collision_threshold, reference_ns_per_day=reference_ns_per_day,
                         rollout_ns_per_day=rollout_ns_per_day)
        systems.append({"name": names[index], "reference": _describe(reference), "rollout": _describe(rollout),
                        "metrics": result["metrics"]})
        loaded.append((reference, rollout, result["curves"]))
    across = across_systems(systems)
    from openmm_cgml import __version__

    result = {"openmm_cgml_version": __version__,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "settings": _settings(model, mapping_method, mapping_params, contact_cutoff, collision_threshold),
              "summary": summary(systems, across), "across_systems": across, "systems": systems,
              "plots": {"across_systems": []}}
    return _write_report(out, result, loaded, plots)
