"""Infrastructure: result rows, resume and sweeps, the run context every task opens with."""
