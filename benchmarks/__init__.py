"""Benchmarks of slam_jax: checkpoint conversion and the forward pass (see docs/performance.md for conventions)."""
