"""The viewer: `python -m tinyvm_jax.view` (datasets, traces, predictions)."""
