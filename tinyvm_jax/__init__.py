from tinyvm_jax._src import isa  # placeholder until the API lands
