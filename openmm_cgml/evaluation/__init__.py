"""Evaluation against reference MD: the report of ``cgml evaluate``, the fidelity benchmark, the property task.

``analysis``        observables on plain bead arrays: Rg, ACFs, distributions, TICA, JS divergences, collisions
``trajectories``    ``BeadTrajectory``: references (fine HDF5 coarse-grained, or bead files) and rollouts as beads
``compare``         every metric of one rollout against its reference, r^2 across systems, the summary
``report``          ``evaluate``: load, compare, plot, and write metrics.json, report.md and report.html
``statistics``      bootstrap intervals, relaxation-time estimators, JS floor, the composition baseline
``dynamics``        Rg^2 relaxation, Rouse modes, centre-of-mass diffusion of bead chains
``sequences``       heteropolymer sequences for disjoint, stratified benchmark splits
``references``      cached, batched reference MD of isolated chains
``rollouts``        batched rollouts of many molecules, interleaved speed measurement
``fidelity``        the metrics, model against reference and reference against reference
``fidelity_report`` the benchmark's Markdown report and plots
``benchmark``       the whole fidelity benchmark (``cgml benchmark``) from a versioned definition file
``peptide``         the peptide benchmark: torsion and Ramachandran JS, basins, MSM kinetics, handedness
``structures``      quality of atom structures: stereocentres, clashes, heavy-atom RMSD, backmapping quality
``properties``      the backbone property task: energies, forces and dipoles of a molecule (``bench/backbone.py``)

The command lines are ``openmm_cgml/cli/evaluate.py`` and ``openmm_cgml/cli/benchmark.py``.
"""
