"""Evaluation against reference MD: statistics, dynamics observables, and the fidelity benchmark.

``statistics``  bootstrap intervals, relaxation-time estimators, JS floor, the composition baseline
``dynamics``    Rg^2 relaxation, Rouse modes, centre-of-mass diffusion of bead chains
``sequences``   heteropolymer sequences for disjoint, stratified benchmark splits
``references``  cached, batched reference MD of isolated chains
``rollouts``    batched rollouts of many molecules, interleaved speed measurement
``fidelity``    the metrics, model against reference and reference against reference
``benchmark``   ``cgml benchmark``: the whole benchmark from a versioned definition file
"""
