"""The propagator: Dynamics and Score networks on beads, and their sampler."""
