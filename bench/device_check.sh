#!/usr/bin/env bash
# One short run on a lent GPU machine (or here, on the CPU): install, CUDA tests, benches; prints one JSON object.
#
#   bash bench/device_check.sh > device_check.json
#
# On a machine without CUDA it runs the CPU part (a short propagator bench), says so in the JSON, and exits 0.
# The device image has its own torch (2.11, CUDA 13); the package asks for torch >= 2.9, so pip keeps it.
# openmm's CUDA 13 platform wheel comes first.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$(mktemp -d)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    cuda=true
    python3 -m pip install --quiet --disable-pip-version-check "openmm[cuda13]>=8.6,<8.7" >"$out/install.log" 2>&1
    python3 -m pip install --quiet --disable-pip-version-check -e ".[dev]" >>"$out/install.log" 2>&1
    python3 -m pytest -q -m cuda -p no:cacheprovider >"$out/cuda_tests.log" 2>&1; tests_rc=$?
    timeout 150 python3 bench/propagator.py --devices cpu cuda --beads 10 1000 10000 --repeats 3 \
        >"$out/propagator.json" 2>"$out/propagator.log"
    # the step through torch.compile: fixed work, CUDA graphs (compilation outside the timings)
    timeout 180 python3 bench/propagator.py --model polymer-chain-1ps --devices cuda --beads 10 10000 --repeats 3 \
        --compile-only >"$out/propagator_compiled.json" 2>"$out/propagator_compiled.log"
    timeout 150 python3 bench/integrator.py --platform CUDA >"$out/integrator.json" 2>"$out/integrator.log"
else
    cuda=false
    tests_rc=skipped
    timeout 240 python3 bench/propagator.py --devices cpu --beads 10 100 --repeats 2 --rollout-steps 20 \
        >"$out/propagator.json" 2>"$out/propagator.log"
    echo '{}' >"$out/integrator.json"
    echo '{}' >"$out/propagator_compiled.json"
fi

python3 - "$out" "$cuda" "$tests_rc" <<'PY'
import json, sys
from pathlib import Path

out, cuda, tests = Path(sys.argv[1]), sys.argv[2] == "true", sys.argv[3]

def read(name):
    try:
        return json.loads((out / name).read_text() or "{}")
    except (OSError, ValueError) as error:
        return {"error": f"{name}: {error}"}

tail = (out / "cuda_tests.log").read_text().strip().splitlines()[-1:] if (out / "cuda_tests.log").exists() else []
print(json.dumps({"cuda": cuda, "note": None if cuda else "no CUDA on this machine: CPU part only",
                  "cuda_tests": {"exit_code": tests, "summary": tail[0] if tail else None},
                  "propagator": read("propagator.json"), "propagator_compiled": read("propagator_compiled.json"),
                  "integrator": read("integrator.json")}, indent=1))
PY
exit 0
