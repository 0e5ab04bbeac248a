"""The method-agnostic core: policy interface, cache, attention function, engine, registry, RoPE,
models, timing and errors. Nothing here imports a method (``baselines/`` or ``adore.release``)."""
