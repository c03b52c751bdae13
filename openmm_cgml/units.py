"""Unit handling at public API boundaries.

OpenMM's convention is followed: public functions accept ``openmm.unit``
quantities (or plain numbers, taken to be in OpenMM's default unit) and
return quantities. Inside the package everything is a plain number in
nm, ps, kJ/mol, amu, K and elementary charges.
"""
from __future__ import annotations

import numbers

import numpy as np
import openmm
import openmm.unit as u

__all__ = ["strip", "strip_array", "strip_box", "whole_number", "whole_array", "is_number", "is_integer", "NM", "PS",
           "KJ_PER_MOL", "AMU", "KELVIN", "COLLISION_DISTANCE_NM"]

NM = u.nanometer
PS = u.picosecond
KJ_PER_MOL = u.kilojoule_per_mole
AMU = u.dalton
KELVIN = u.kelvin

# Two beads closer than this have collided: the "bead collision" criterion of Fu et al. (TMLR 2023).
COLLISION_DISTANCE_NM = 0.1


def strip(value, unit: u.Unit, name: str) -> float:
    """Return ``value`` as a float in ``unit``.

    A plain number is taken to be in ``unit`` already (as OpenMM does); a
    quantity in an incompatible unit raises a ``ValueError`` that names the
    parameter, e.g. a time step given in nanometers.
    """
    if u.is_quantity(value):
        if not value.unit.is_compatible(unit):
            raise ValueError(
                f"{name} must be in units compatible with {unit.get_name()}, got {value}"
            )
        value = value.value_in_unit(unit)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a quantity in {unit.get_name()}, got {value!r}") from None
    if not np.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    return number


def strip_array(value, unit: u.Unit, name: str, shape_tail: tuple[int, ...] | None = (3,)) -> np.ndarray:
    """Return an array-like (or a quantity of one, or a list of Vec3) in ``unit`` as float64.

    Raises ``ValueError`` naming ``name`` for incompatible units, a wrong
    trailing shape or non-finite values (NaN coordinates are never accepted).
    """
    if u.is_quantity(value):
        if not value.unit.is_compatible(unit):
            raise ValueError(
                f"{name} must be in units compatible with {unit.get_name()}, got unit {value.unit.get_name()}"
            )
        value = value.value_in_unit(unit)
    if value is None:
        raise ValueError(f"{name} is required, got None")
    try:
        array = np.asarray([tuple(v) if hasattr(v, "x") else v for v in value] if isinstance(value, list) else value,
                           dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be numbers (or a quantity) in {unit.get_name()}: {error}") from None
    if shape_tail is not None and tuple(array.shape[-len(shape_tail):]) != tuple(shape_tail):
        raise ValueError(f"{name} must have trailing shape {shape_tail}, got {array.shape}")
    if not np.all(np.isfinite(array)):
        bad = np.argwhere(~np.isfinite(array.reshape(-1, *shape_tail) if shape_tail else array))[:5]
        raise ValueError(f"{name} contains NaN or infinite values (first at {bad.tolist()})")
    return array


def is_number(value) -> bool:
    """Whether a value read from YAML or JSON is a number: an int or a float, not a bool (YAML's true)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_integer(value) -> bool:
    """Whether a value read from YAML or JSON is an integer: an int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def whole_number(value, name: str) -> int:
    """``value`` as an int; ``ValueError`` naming ``name`` for anything but a whole number (``2.0`` is 2).

    Booleans, strings, quantities, NaN, inf and fractions are refused.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not np.isfinite(value) \
            or value != int(value):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(value)


def whole_array(values, name: str, width: int | None = None) -> np.ndarray:
    """``values`` as a flat int64 array, or as rows of ``width``; ``ValueError`` naming ``name`` otherwise.

    Whole numbers only: strings, fractions, NaN and inf are refused (never silently truncated).
    """
    try:
        array = np.asarray(values)
        whole = array.dtype.kind in "iu" or (array.dtype.kind == "f" and bool(np.all(np.isfinite(array)))
                                             and bool(np.all(array == np.rint(array))))
    except (TypeError, ValueError):   # ragged nested lists
        whole = False
    if not whole:
        raise ValueError(f"{name} must be whole numbers, got {values!r:.80}")
    if width and array.size % width:
        raise ValueError(f"{name} must be rows of {width} numbers, got shape {array.shape}")
    return array.astype(np.int64).reshape((-1, width) if width else -1)


def strip_box(box, name: str = "box") -> np.ndarray:
    """Periodic box vectors as a float64 array ``(..., 3, 3)`` in nm, vectors as rows.

    Parameters
    ----------
    box : array-like, Quantity compatible with nanometers, or OpenMM's three ``Vec3`` quantities
        The box vectors a, b, c, e.g. ``Topology.getPeriodicBoxVectors()`` or ``(3, 3)`` /
        ``(..., 3, 3)`` numbers in nm.
    name : str
        What the error messages call the argument.

    Returns
    -------
    numpy.ndarray
        ``(..., 3, 3)`` float64, nm.

    Raises
    ------
    ValueError
        For a wrong shape, non-finite values or a non-positive diagonal (a_x, b_y, c_z).
    """
    if u.is_quantity(box):
        box = box.value_in_unit(NM)
    if isinstance(box, (list, tuple)):
        box = [v.value_in_unit(NM) if u.is_quantity(v) else v for v in box]
        box = [tuple(v) if isinstance(v, openmm.Vec3) else v for v in box]
    box = np.asarray(box, dtype=np.float64)
    if box.shape[-2:] != (3, 3):
        raise ValueError(f"{name} must be box vectors of shape (3, 3) or (..., 3, 3) nm, got {box.shape}")
    if not np.all(np.isfinite(box)) or np.any(np.diagonal(box, axis1=-2, axis2=-1) <= 0):
        raise ValueError(f"{name} vectors must be finite with positive diagonal (a_x, b_y, c_z)")
    return box
