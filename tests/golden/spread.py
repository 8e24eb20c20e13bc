"""Measure how far the tiny demo's outputs move across settings: the basis of the golden tolerances.

    python tests/golden/spread.py                       # thread, oneDNN and op-determinism settings
    python tests/golden/spread.py --python OTHER_VENV/bin/python   # ... and another install

Runs the tiny demo (as tests/golden/generate.py does) once with this environment as it is (the
reference) and once per setting below, compares each run with the reference by the checks of
tests/golden/compare.py, and prints, per check group and per check, the largest deviation, the
setting that produced it and the limit compare.py sets. Nothing is written to tests/golden/.
A run is ~20 s of a 2-core CPU; the default matrix takes about two minutes.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # `python tests/golden/spread.py`: import the checkout's packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.golden.compare import check_group, compare  # noqa: E402
from tests.golden.generate import finish, package_versions, run_tiny, summarise  # noqa: E402

SETTINGS = {
    "1 intra-op thread": {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"},
    "oneDNN off": {"TF_ENABLE_ONEDNN_OPTS": "0"},
    "oneDNN off, 1 thread": {"TF_ENABLE_ONEDNN_OPTS": "0", "TF_NUM_INTRAOP_THREADS": "1",
                             "TF_NUM_INTEROP_THREADS": "1"},
    "op determinism off": {"DAQSM_OP_DETERMINISM": "0"},
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", nargs="*", default=[], help="other interpreters (installs) to compare")
    parser.add_argument("--only-installs", action="store_true", help="skip the thread/oneDNN settings")
    parser.add_argument("--keep", help="keep the run folders in this folder (default: a temporary one)")
    args = parser.parse_args(argv)
    runs = {} if args.only_installs else {name: (env, None) for name, env in SETTINGS.items()}
    for python in args.python:
        v = package_versions(python)
        runs[f"install tf {v['tensorflow']} keras {v['keras']} numpy {v['numpy']}"] = ({}, python)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(args.keep or tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        error = finish(run_tiny(tmp / "reference"))
        if error:
            print(error, file=sys.stderr)
            return 1
        reference = summarise(tmp / "reference")
        worst: dict = {}
        for i, (name, (env, python)) in enumerate(runs.items()):
            out = tmp / f"run{i}"
            error = finish(run_tiny(out, env, python))
            if error:
                print(f"{name}: {error}", file=sys.stderr)
                return 1
            for check in compare(*summarise(out), *reference):
                if check.name not in worst or not check.value <= worst[check.name][0].value:
                    worst[check.name] = (check, name)
            print(f"ran: {name}", file=sys.stderr, flush=True)
    print(f"reference: {package_versions()}")
    by_group: dict = {}
    for check, name in worst.values():
        group = check_group(check.name)
        if group not in by_group or not check.value <= by_group[group][0].value:
            by_group[group] = (check, name)
    for group, (check, name) in sorted(by_group.items()):
        print(f"group {group:6s} worst {check.value:.3g} ({check.name}, {name})")
    for check, name in sorted(worst.values(), key=lambda cn: cn[0].name):
        if check.value > 0:
            ratio = check.limit / check.value if check.value else float("inf")
            print(f"  {check.line()}  [{name}; limit/measured {ratio:.3g}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
