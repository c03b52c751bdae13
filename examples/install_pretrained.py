"""Copy the models of a finished small end-to-end run into the package's pretrained set.

    OMP_NUM_THREADS=1 python bench/reproduce.py --out runs/reproduce > runs/reproduce/result.json
    python examples/install_pretrained.py runs/reproduce
    python examples/install_pretrained.py --upgrade     # re-export the shipped models with this version's step
    python examples/install_pretrained.py --upgrade --only polymer-chain-1ps --exclusion-retries 8

Each model goes to ``openmm_cgml/pretrained/NAME.safetensors`` (the weights form); ``index.json`` beside
them records the command that made it and the metrics of its evaluation, so
every shipped model can be traced to the documented pipeline.

``--upgrade`` keeps the shipped weights and metadata but rebuilds each model
from this package's code (``openmm_cgml.model_file.rebuild``) and exports it
again, so a change to the step (such as the refinement sampler) reaches the
shipped files without retraining; ``index.json`` records the upgrade.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from openmm_cgml import model_formats, pretrained
from openmm_cgml.model_file import export_model, load, rebuild

# pretrained name -> (model file, evaluation metrics) inside a bench/reproduce.py --out folder
SOURCES = {
    "polymer-chain": ("polymer/model.safetensors", "polymer/report/metrics.json",
                      "python examples/polymer_chains.py --small (via bench/reproduce.py)"),
    "alanine-dipeptide": ("peptides/alanine-dipeptide/model.safetensors",
                          "peptides/alanine-dipeptide/report/metrics.json",
                          "python examples/peptides.py --small (via bench/reproduce.py)"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, nargs="?", help="the --out folder of a finished bench/reproduce.py run")
    parser.add_argument("--upgrade", action="store_true", help="re-export the shipped models with this code")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="--upgrade only these shipped models")
    parser.add_argument("--exclusion-retries", type=int, metavar="N",
                        help="--upgrade: switch the truncated step to N redraws (0: off) in the re-exported files")
    args = parser.parse_args(argv)
    if (args.run is None) == (not args.upgrade):
        parser.error("give either a run folder or --upgrade")
    index_path = pretrained.PRETRAINED_DIR / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    if args.upgrade:
        for name in args.only or pretrained.available():
            model = load(pretrained.path(name))
            if args.exclusion_retries is not None:
                model.exclusion_retries = args.exclusion_retries
                index.setdefault(name, {})["exclusion_retries"] = args.exclusion_retries
            # the first export's provenance, kept across repeated upgrades
            before = model.metadata.get("upgraded_from") or {key: model.metadata.get(key)
                                                             for key in ("exported_at", "versions")}
            export_model(rebuild(model), pretrained.path(name), dict(model.metadata, upgraded_from=before))
            index.setdefault(name, {}).update(upgraded_from=before,
                                              sha256=model_formats.file_sha256(pretrained.path(name)))
            print(f"upgraded {name}: {pretrained.path(name)}")
        index_path.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
        return 0
    for name, (model_file, metrics_file, command) in SOURCES.items():
        source = args.run / model_file
        if not source.is_file():
            print(f"skipping {name}: {source} does not exist", file=sys.stderr)
            continue
        model = load(source)  # refuses a corrupted or edited file before it is installed
        metrics = json.loads((args.run / metrics_file).read_text()) if (args.run / metrics_file).is_file() else {}
        target = pretrained.PRETRAINED_DIR / f"{name}{pretrained.SUFFIX}"
        export_model(rebuild(model), target, model.metadata)
        index[name] = {
            "command": command, "file": target.name, "sha256": model_formats.file_sha256(target),
            "model_timestep_ps": model.model_timestep._value,
            "md_steps_per_model_step": model.metadata["md_steps_per_model_step"],
            "k": model.k, "n_parameters": model.metadata.get("n_parameters"),
            "refine_sigmas": model.refine_sigmas, "training": model.metadata.get("training", {}),
            "evaluation": metrics.get("summary", {}),
        }
        print(f"installed {name}: {target}")
    index_path.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
