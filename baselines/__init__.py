"""Baseline KV-cache policies, one file each; every module registers itself on import."""
