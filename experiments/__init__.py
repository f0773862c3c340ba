"""Experiments: data, noise, metrics, training, sweeps, results and plots (data flows in that order)."""

__all__: list[str] = []
