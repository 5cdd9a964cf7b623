"""Coverage-guided fuzzing with atheris (libFuzzer): `python -m tests.fuzz.run TARGET [libFuzzer flags]`.

`make fuzz` runs every target for a while (findings in fuzz-findings/; replay one with
`python -m tests.fuzz.run TARGET fuzz-findings/crash-…`); `make test` runs each briefly
(tests/fuzz/test_atheris.py).
A target starts from valid seeds (a real CheckRequest, token, certificate, config) written to a fresh
corpus directory; a finding is written as crash-* in the working directory and exits non-zero.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["ext_authz"]):
    from tests.fuzz import targets


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in targets.TARGETS:
        sys.exit(f"usage: python -m tests.fuzz.run {{{','.join(targets.TARGETS)}}} [libFuzzer flags]")
    name = sys.argv[1]
    target = targets.TARGETS[name]
    args = sys.argv[2:]
    if not any(not a.startswith("-") for a in args):  # no input files or corpus named: start from seeds
        corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
        for i, seed in enumerate(targets.seeds(name)):
            (corpus / f"seed-{i}").write_bytes(seed)
        args.append(str(corpus))
    targets.demo()  # the demo PKI is made before fuzzing starts, not inside the first input
    atheris.Setup([sys.argv[0], *args], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
