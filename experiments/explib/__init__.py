"""Shared code of the experiments notebooks: data, a pure-JAX transformer,
in-graph training, linear probes and reporting. Not part of `tinyvm_jax`."""
