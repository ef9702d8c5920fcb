"""Recovers hidden parts of Tier 1 programs from input/output examples by
gradient descent on instruction logits through the soft Tiny-VM.

Prints one JSON line: success_rate, n_targets, wall_s (compile included),
compile_s, run_s, cpu_s, the finer rates, and the settings. See
`tinyvm_jax.recovery_experiment` for the task and the fit.

  python benchmarks/program_recovery.py                 # 100 targets, opcodes
  python benchmarks/program_recovery.py --hide srcs --n-targets 50
"""

import argparse
import dataclasses
import json
import sys

from tinyvm_jax import RecoveryConfig, recovery_summary


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--n-targets", type=int, default=100)
  for f in dataclasses.fields(RecoveryConfig):
    parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default),
                        default=f.default)
  args = vars(parser.parse_args(argv))
  seed, n_targets = args.pop("seed"), args.pop("n_targets")
  config = RecoveryConfig(**args)
  try:
    result = recovery_summary(seed=seed, n_targets=n_targets, config=config)
  except ValueError as e:
    parser.error(str(e))
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
