"""The runtime: chain scheduler, executor, backends and the counter-based noise generator."""
