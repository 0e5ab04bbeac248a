"""Tasks: generation, streaming, StreamEval, parity, throughput."""
