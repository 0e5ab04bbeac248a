"""Tasks of the harness: generation evaluation, metrics, result rows, reports."""
