"""What every command line shares: one-line errors and absl flag parsing."""

import sys
from typing import NoReturn

from absl import flags


def fail(prog: str, msg: str, code: int = 2) -> NoReturn:
  """Prints `prog: error: msg` on stderr and exits with `code` (2: a user
  mistake, 1: the work failed)."""
  print(f"{prog}: error: {msg}", file=sys.stderr)
  sys.exit(code)


def flags_parser(prog: str):
  """An absl `flags_parser` that turns a bad flag into one `fail` line."""
  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      fail(prog, str(e).splitlines()[0])
  return parse
