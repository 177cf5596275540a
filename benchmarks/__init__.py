"""Benchmarks of slam_jax: checkpoint conversion and the forward pass (see PERFORMANCE.md for conventions)."""
