"""The sweep: search space, run directory (local or bucket), the Tuner, progress and results."""
