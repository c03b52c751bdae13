"""Heteropolymer sequences for the benchmark splits: designed, described, and kept disjoint.

A sequence is a string of ``A`` (solvophobic monomer) and ``B`` (solvophilic).
Two features describe it: the solvophobic fraction, and the blockiness, the
fraction of neighbouring monomer pairs that are alike (0 for ABAB..., 1 for a
homopolymer). Test sets are stratified over both, so that composition alone
cannot explain their sizes.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

__all__ = ["canonical", "features", "FEATURE_NAMES", "stratified", "uniform"]

FEATURE_NAMES = ("solvophobic_fraction", "blockiness", "log_length")
_CANDIDATES = 256  # random arrangements drawn per stratum cell


def canonical(sequence: str) -> str:
    """The sequence or its reverse, whichever sorts first: a chain read backwards is the same molecule."""
    return min(sequence, sequence[::-1])


def features(sequence: str) -> np.ndarray:
    """``(solvophobic_fraction, blockiness, log_length)`` of one sequence."""
    monomers = np.frombuffer(sequence.encode(), dtype=np.uint8)
    alike = float(np.mean(monomers[1:] == monomers[:-1])) if len(sequence) > 1 else 1.0
    return np.array([float(np.mean(monomers == ord("A"))), alike, float(np.log(len(sequence)))])


def _arrangements(n_a: int, length: int, rng: np.random.Generator) -> list[str]:
    base = np.array(["A"] * n_a + ["B"] * (length - n_a))
    return ["".join(rng.permutation(base)) for _ in range(_CANDIDATES)]


def _take(candidates: Iterable[str], used: set[str]) -> str | None:
    for sequence in candidates:
        if canonical(sequence) not in used:
            used.add(canonical(sequence))
            return sequence
    return None


def stratified(n: int, length: int, seed: int, used: set[str],
               fractions=(0.25, 0.4, 0.6, 0.75), blockiness_levels=(0.2, 0.8)) -> list[str]:
    """``n`` sequences of ``length`` monomers on a grid of solvophobic fraction x blockiness.

    Cells are visited in turn (fraction-major); in each, random arrangements
    of ``round(fraction * length)`` A monomers are ranked by blockiness and
    the one at the wanted quantile (``blockiness_levels``) not yet in
    ``used`` is taken. ``used`` (canonical forms) is updated, which keeps
    splits disjoint when they share it.
    """
    rng = np.random.default_rng(seed)
    cells = [(f, b) for f in fractions for b in blockiness_levels]
    chosen = []
    while len(chosen) < n:
        fraction, level = cells[len(chosen) % len(cells)]
        n_a = int(np.clip(round(fraction * length), 1, length - 1))
        # ties in blockiness broken by the sequence itself: a set's order changes with PYTHONHASHSEED
        candidates = sorted(set(_arrangements(n_a, length, rng)), key=lambda s: (features(s)[1], s))
        # start at the wanted blockiness quantile and walk outwards until an unused sequence turns up
        start = int(level * (len(candidates) - 1))
        order = sorted(range(len(candidates)), key=lambda i: (abs(i - start), i))
        sequence = _take((candidates[i] for i in order), used)
        if sequence is None:
            raise ValueError(f"no unused {length}-monomer sequence with {n_a} solvophobic monomers is left")
        chosen.append(sequence)
    return chosen


def uniform(n: int, lengths, seed: int, used: set[str], fraction_range=(0.15, 0.85)) -> list[str]:
    """``n`` random sequences, lengths cycling through ``lengths``, solvophobic fraction uniform in the range."""
    rng = np.random.default_rng(seed)
    lengths = [int(v) for v in lengths]
    chosen = []
    for attempt in range(100 * n):
        if len(chosen) == n:
            break
        length = lengths[len(chosen) % len(lengths)]
        fraction = rng.uniform(*fraction_range)
        sequence = "".join(np.where(rng.random(length) < fraction, "A", "B"))
        if canonical(sequence) not in used:
            used.add(canonical(sequence))
            chosen.append(sequence)
    if len(chosen) < n:
        raise ValueError(f"could not draw {n} distinct sequences of lengths {lengths}")
    return chosen
