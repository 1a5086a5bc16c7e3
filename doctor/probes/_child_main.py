"""Entry point of a probe child process (see doctor.probes.child). Not for direct use."""

from __future__ import annotations

import importlib
import json
import sys
import traceback

from doctor.probes.child import RESULT_MARKER


def main() -> None:
    target = sys.argv[1]
    module_name, func_name = target.split(":", 1)
    args = json.loads(sys.stdin.read() or "{}")
    # Libraries print banners and warnings to stdout; keep our result line unambiguous.
    real_stdout = sys.stdout
    sys.stdout = sys.stderr
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        result = func(args)
    except BaseException as exc:  # the whole point: report any failure as data
        traceback.print_exc(file=sys.stderr)
        result = {"__error__": f"{type(exc).__name__}: {exc}".splitlines()[0][:500]}
    sys.stdout = real_stdout
    print(RESULT_MARKER + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()
