"""Neural-network building blocks: neighbour search, bases and the PaxNet backbone.

``radius_graph`` and ``PaxNet`` are the public contract (docs/design.md, "nn");
both are TorchScript-compatible and run on CPU/CUDA in float32 or float64.
"""
from .basis import AngularBasis, BesselBasis, PolynomialEnvelope, legendre
from .neighbors import edge_vectors, radius_graph
from .paxnet import PaxNet

__all__ = ["radius_graph", "edge_vectors", "PaxNet", "BesselBasis", "AngularBasis", "PolynomialEnvelope", "legendre"]
