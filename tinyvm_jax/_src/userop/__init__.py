"""Tier 4: userops, their decompositions and few-shot rows (spec section 11).

One concept a module, data flowing down the list:

- `binding`: `UserOp` (a symbol bound to its decomposition), its array form
  `Decomposition`, the default userops and their argument checks;
- `substitution`: `substitute`, the calls replaced by their decompositions
  (JSON lists and `Program` arrays);
- `shapes`: the static sizes of rows (`UseropShapes`, `userop_shapes`);
- `renders`: the few-shot renders `userop_direct` and
  `userop_with_decomposition`, on `render`'s slot helpers;
- `generate`: `UseropRow`, `gen_userop_row` (one row) and
  `generate_userop_rows` (a jitted batch for given userops);
- `tier`: Tier 4 as a tier (`TIER4`: sizes, axes, eval buckets) and its
  dataset rows by (seed base, split, bucket, index);
- `formats`: rows as JSON (the documented row format), Parquet and zarr
  arrays, and back;
- `check`: replay and rebuild checks (`check_userop_rows`, on the check
  layer's `Mismatch`).

`api` re-exports what the rest of the package uses (this `__init__`
imports nothing, so the modules above import each other without a cycle
through the package).
"""
