"""Bad input to ``cgml benchmark``: refused in one ``cgml benchmark: error:`` line before any reference MD runs."""

import pytest
import yaml

from openmm_cgml.evaluation.benchmark import BENCHMARKS_DIR


def benchmark(definition, out, *extra, scale="small"):
    return ["benchmark", str(definition), "--scale", scale, "--out", str(out), *map(str, extra)]


def definition(tmp_path, edit=None, text=None):
    """A copy of the shipped polymer definition, changed by ``edit(values)`` or replaced by ``text``."""
    path = tmp_path / "bench.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    if text is not None:
        return path
    values = yaml.safe_load((BENCHMARKS_DIR / "polymer.yaml").read_text())
    if edit is not None:
        edit(values)
    path.write_text(yaml.safe_dump(values))
    return path


def small(key, value):
    def edit(values):
        section, _, name = key.partition(".")
        if name:
            values["scales"]["small"][section][name] = value
        else:
            values["scales"]["small"][section] = value
    return edit


def top(key, value):
    return lambda values: values.__setitem__(key, value)


@pytest.mark.parametrize("kind, text", [
    ("empty", ""), ("garbage", "scales: {small: [\n"), ("list", "- small\n- paper\n"), ("binary", b"\xff\xfe\0" * 50),
], ids=["empty", "garbage", "list", "binary"])
def test_unreadable_definition(tmp_path, fails, kind, text):
    path = definition(tmp_path, text=text)
    fails(benchmark(path, tmp_path / "out"), names=["bench.yaml"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("edit, names", [
    (top("scales", ["small"]), ["scales"]),
    (small("train", [1, 48]), ["train", "mapping"]),
    (small("train.n", "many"), ["train.n", "many"]),
    (small("test.reference_ns", -1.0), ["test.reference_ns", "> 0"]),
    (small("test.reference_ns", float("nan")), ["test.reference_ns", "finite"]),
    (small("frame_stride", 0), ["frame_stride", "> 0"]),
    (small("timing", {"rounds": 3}), ["timing", "lacks"]),
    (small("validation.shuffle", True), ["validation", "unknown", "shuffle"]),
    (top("chains_per_context", "32"), ["chains_per_context", "'32'"]),
    (top("refine_candidates", 0.3), ["refine_candidates", "list"]),
    (lambda values: values.pop("js_bins"), ["js_bins"]),
    (lambda values: values["scales"].__setitem__("small", "big"), ["small", "mapping"]),
], ids=["scales-list", "split-list", "string-count", "negative-length", "nan-length", "zero-stride", "timing-keys",
        "unknown-key", "string-number", "scalar-list", "missing-key", "scale-string"])
def test_bad_definition(tmp_path, fails, edit, names):
    fails(benchmark(definition(tmp_path, edit), tmp_path / "out"), names=["bench.yaml", *names])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, scale, names", [
    ("nonesuch", "small", ["nonesuch", "polymer"]), ("polymer", "huge", ["huge", "small", "paper"]),
    ("missing.yaml", "small", ["missing.yaml"]),
])
def test_unknown_benchmark_or_scale(tmp_path, fails, name, scale, names):
    fails(benchmark(tmp_path / name if name.endswith(".yaml") else name, tmp_path / "out", scale=scale), names=names)
    assert not (tmp_path / "out").exists()


@pytest.fixture
def finished(tmp_path):
    """An output folder holding a (stand-in) finished benchmark run to protect."""
    out = tmp_path / "out"
    (out / "references").mkdir(parents=True)
    (out / "fidelity.json").write_text('{"benchmark": "polymer"}\n')
    (out / "report.md").write_text("# Fidelity benchmark\n")
    return out


def test_existing_result_without_overwrite(fails, finished):
    fails(benchmark("polymer", finished), names=["fidelity.json", "--overwrite"], keep=[finished])


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "unknown-name"])
def test_bad_model_is_refused_before_the_reference_md(pipeline, tmp_path, fails, finished, kind):
    model = tmp_path / f"{kind}.safetensors"
    if kind in ("empty", "truncated"):
        data = pipeline["model"].read_bytes()
        model.write_bytes(b"" if kind == "empty" else data[: len(data) // 2])
    elif kind == "unknown-name":
        model = "no-such-pretrained-model"
    fails(benchmark("polymer", finished, "--overwrite", "--model", model), names=[getattr(model, "name", model)],
          keep=[finished])
    assert sorted(p.name for p in finished.rglob("*")) == ["fidelity.json", "references", "report.md"]


@pytest.mark.parametrize("option, value", [("--workers", 0), ("--workers", -2), ("--platform", "Quantum")])
def test_bad_option(tmp_path, fails, finished, option, value):
    fails(benchmark("polymer", finished, "--overwrite", option, value), names=[option, str(value)], keep=[finished])


def test_out_is_a_file(tmp_path, fails):
    out = tmp_path / "out"
    out.write_text("a file\n")
    fails(benchmark("polymer", out), names=["out", "not a folder"], keep=[out])


def test_unwritable_out_folder(fails, locked_folder):
    fails(benchmark("polymer", locked_folder / "out"), names=[str(locked_folder)])

