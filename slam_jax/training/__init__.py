"""Training: mesh and sharding rules, optimiser and schedules, train step, checkpoints, the loop."""
