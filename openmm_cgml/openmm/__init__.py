"""OpenMM side: the integrator, the bead system, bare rollouts and reporters."""
