"""Flow path and loss, solvers, PGFM guidance, the guided sampler, the DDIM counterpart."""
