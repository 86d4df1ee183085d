"""A deterministic simulator of the lease protocol (docs/testing.md, "Simulation")."""
