"""``python -m shared.tiny_models --out DIR``: build every tiny checkpoint the services load locally."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from shared.logging_config import quiet_progress_bars
from shared.tiny_models.build import BUILDERS, build_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder to write the models into")
    parser.add_argument("--only", choices=sorted(BUILDERS), action="append", help="build only these")
    parser.add_argument("--force", action="store_true", help="rebuild even if already present")
    args = parser.parse_args(argv)
    # Saving a few-MB model needs no progress bars in every script's output.
    quiet_progress_bars()
    started = time.perf_counter()
    paths = build_all(args.out, only=args.only, force=args.force, log=_log)
    _log(f"built in {time.perf_counter() - started:.1f}s")
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0


_log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr)  # noqa: E731

if __name__ == "__main__":
    raise SystemExit(main())
