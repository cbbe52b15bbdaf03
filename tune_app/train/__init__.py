"""The training job's inside: the DDP loop, where it runs (session), the LR schedule, its output folder."""
