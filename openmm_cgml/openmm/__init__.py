"""OpenMM side: the integrator, the bead system, bare rollouts and reporters.

One concept per module, each re-exported here:

* ``integrator``: ``CGMLIntegrator``, the model as an ``openmm.CustomIntegrator``;
* ``bead_system``: ``coarse_grained_system``, ``molecule_mapping`` (which mapping fits a model and a
  molecule), ``reference_history``;
* ``rollout``: the bare torch ``rollout``, ``step_noise``, ``model_graph``, ``UnstableRolloutError``;
* ``reporters``: ``ProgressReporter`` and ``trajectory_reporter`` (OpenMM's reporter protocol);
* ``platform``: ``choose_platform``;
* ``torchforce``: the openmm-torch ``TorchForce`` path, kept for the comparison in
  ``bench/integrator_paths.py`` (not re-exported: it needs openmm-torch to be useful).
"""
from openmm_cgml.openmm.bead_system import (
                                            CoarseGrainedSystem,
                                            coarse_grained_system,
                                            mapping_rule,
                                            molecule_mapping,
                                            reference_history,
)
from openmm_cgml.openmm.integrator import CGMLIntegrator
from openmm_cgml.openmm.platform import choose_platform
from openmm_cgml.openmm.reporters import ProgressReporter, trajectory_reporter
from openmm_cgml.openmm.rollout import UnstableRolloutError, model_graph, rollout, step_noise

__all__ = ["CGMLIntegrator", "CoarseGrainedSystem", "coarse_grained_system", "molecule_mapping", "mapping_rule",
           "reference_history", "rollout", "step_noise", "model_graph", "UnstableRolloutError",
           "ProgressReporter", "trajectory_reporter", "choose_platform"]
