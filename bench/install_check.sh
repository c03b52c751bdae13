#!/usr/bin/env bash
# Does `pip install -e ".[dev]"` keep a torch that is already installed, and do the default tests pass with it?
# Builds a fresh venv, installs torch==$TORCH there first (default 2.11.0, the GPU image's), then the package,
# runs the README's test command and prints one JSON object. Takes about 10 minutes and several GB
# (PyPI's torch wheels carry CUDA).
#
#   bash bench/install_check.sh > bench/results/install-torch-2.11.json
set -uo pipefail
cd "$(dirname "$0")/.."
torch_version=${TORCH:-2.11.0}
venv=$(mktemp -d)/venv
clone=$(mktemp -d)/checkout
git clone --quiet . "$clone"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "torch==$torch_version" >/dev/null 2>&1
before=$("$venv/bin/python" -c "import torch; print(torch.__version__)" 2>/dev/null)
(cd "$clone" && "$venv/bin/pip" install --quiet --disable-pip-version-check -e ".[dev]" >/dev/null 2>&1)
after=$("$venv/bin/python" -c "import torch; print(torch.__version__)" 2>/dev/null)
log=$(mktemp)
(cd "$clone" && OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$venv/bin/python" -m pytest -q -p no:cacheprovider >"$log" 2>&1)
code=$?
"$venv/bin/python" - "$torch_version" "$before" "$after" "$code" "$log" "$(git -C "$clone" rev-parse HEAD)" <<'PY'
import json, platform, sys
asked, before, after, code, log, commit = sys.argv[1:]
lines = open(log).read().strip().splitlines()
print(json.dumps({"check": "pip install -e .[dev] over an installed torch, then the default tests",
                  "commit": commit, "torch_asked": asked, "torch_before_install": before,
                  "torch_after_install": after, "torch_kept": before == after and before.startswith(asked),
                  "tests_exit_code": int(code), "tests_summary": lines[-1] if lines else None,
                  "tests_failed": [line.split()[1] for line in lines if line.startswith("FAILED")],
                  "python": platform.python_version(), "machine": platform.machine()}, indent=1))
PY
