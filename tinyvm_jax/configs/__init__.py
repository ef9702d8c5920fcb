"""Default emit settings of each tier: `python -m tinyvm_jax.emit --tier=T`
loads `T.py` from here (the top-level `configs/` of the repository links to
these files: copy one, edit it, pass it with `--config=PATH`)."""
