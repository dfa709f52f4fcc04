"""``python -m mls_xmpp.vectors [--type T] PATH...``: run mlswg vector files.

Prints one line per case and a closing ``N passed, N failed``; exits 1 when
any case failed (or a file could not be read).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

from . import TYPES, checker, detect_type


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mls_xmpp.vectors", description=__doc__)
    p.add_argument("paths", nargs="+", metavar="PATH", help="vector JSON files")
    p.add_argument("--type", choices=sorted(TYPES), help="force the vector type")
    p.add_argument("-q", "--quiet", action="store_true", help="print failures and totals only")
    p.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failures")
    args = p.parse_args(argv)

    passed = failed = 0
    for path in args.paths:
        try:
            with open(path, encoding="utf-8") as f:
                cases = json.load(f)
            vtype = args.type or detect_type(cases)
            check = checker(vtype)
        except Exception as e:  # noqa: BLE001 - report and count as a failure
            print(f"{path}: cannot run: {e}")
            failed += 1
            continue
        file_pass = file_fail = 0
        for i, case in enumerate(cases):
            suite = case.get("cipher_suite")
            label = f"{path} [{vtype}] case {i}" + (f" suite {suite}" if suite else "")
            try:
                check(case)
            except Exception as e:  # noqa: BLE001 - every failure is reported
                file_fail += 1
                print(f"FAIL {label}: {type(e).__name__}: {e}")
                if args.verbose:
                    traceback.print_exc()
            else:
                file_pass += 1
                if not args.quiet:
                    print(f"ok   {label}")
        print(f"{path}: {file_pass} passed, {file_fail} failed")
        passed += file_pass
        failed += file_fail
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
