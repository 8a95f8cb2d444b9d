"""The ``pyflowcore`` command line, end to end in a temporary directory."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pyflowcore as pf
from pyflowcore import cli, datasets
from pyflowcore.cli import MAX_LAYERS, build_flow, main, parse_flow_spec

ROOT = Path(__file__).resolve().parents[1]
needs_realnvp = pytest.mark.skipif(not hasattr(pf, "RealNVP"),
                                   reason="pyflowcore.RealNVP is not built yet")
needs_planar = pytest.mark.skipif(not hasattr(pf, "Planar"),
                                  reason="pyflowcore.Planar is not built yet")


def run(capsys, *argv):
    """``main(argv)`` with every path argument as a string; returns (status, out, err)."""
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_user_error(status, err, *fragments):
    assert status == 2, err
    assert "Traceback" not in err and "error" in err
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture
def moons_files(tmp_path):
    x = datasets.two_moons(300, rng=0)
    np.save(tmp_path / "moons.npy", x)
    np.savetxt(tmp_path / "moons.csv", x, delimiter=",", header="x,y", comments="")
    return x, tmp_path


# -- flow specs -----------------------------------------------------------------
def test_parse_flow_spec():
    assert parse_flow_spec("realnvp(masks=4,layers=2,units=64)+scale+shift") == [
        ("realnvp", {"num_masks": 4, "num_layers": 2, "units": 64}),
        ("scale", {}), ("shift", {})]
    assert parse_flow_spec(" planar*3 + Shift ") == [("planar", {})] * 3 + [("shift", {})]
    assert parse_flow_spec("realnvp( units = 8 )*2") == [("realnvp", {"units": 8})] * 2
    assert parse_flow_spec("radial()") == [("radial", {})]


@pytest.mark.parametrize("spec, match", [
    ("", "empty"),
    ("scale++shift", "cannot read the term ''"),
    ("realnvp(masks=4", "cannot read the term"),
    ("glow+shift", "unknown flow 'glow'.*planar, radial, realnvp, scale, shift"),
    ("realnvp(depth=3)", "unknown argument 'depth' for realnvp.*masks, layers, units"),
    ("scale(units=3)", "scale takes no arguments"),
    ("realnvp(masks=four)", "masks=four.*integer"),
    ("realnvp(masks=2,masks=4)", "given twice"),
    ("realnvp(masks)", "malformed argument 'masks'"),
    ("planar*0", "repeat count '0'"),
    ("planar*x", "repeat count 'x'"),
    # Only ASCII digits: str.isdigit() accepts these, int() refuses or reads them.
    ("planar*\u00b2", "repeat count '\u00b2'.*integer >= 1"),
    ("planar*\u0663", "repeat count '\u0663'.*integer >= 1"),
    ("realnvp(units=\u00b2)", "units=\u00b2.*non-negative integer"),
    ("realnvp(units=\u0663)", "units=\u0663.*non-negative integer"),
    pytest.param("realnvp(units=" + "9" * 5000 + ")", "units of realnvp.*too large",
                 id="units-of-5000-digits"),
    # At most MAX_LAYERS layers, told before any is built.
    ("planar*100000000", "repeat count 100000000 .*at most 10000 layers"),
    (f"planar*{MAX_LAYERS + 1}", "at most 10000 layers"),
    pytest.param("planar*" + "9" * 5000, "at most 10000 layers", id="count-of-5000-digits"),
    (f"shift*{MAX_LAYERS}+shift", "more than 10000 layers"),
])
def test_malformed_flow_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_flow_spec(spec)


def test_layer_bound():
    assert MAX_LAYERS == 10_000
    assert len(parse_flow_spec(f"shift*{MAX_LAYERS - 1}+scale")) == MAX_LAYERS
    assert parse_flow_spec("planar*007") == [("planar", {})] * 7


def test_build_flow():
    flow = build_flow("scale+shift*2", 3, dtype="float32", rng=0)
    assert isinstance(flow, pf.Chain) and flow.dtype == np.float32 and flow.dim == 3
    assert [type(f).__name__ for f in flow.layers] == ["ElementwiseScale", "Shift", "Shift"]
    assert isinstance(build_flow("shift", 2), pf.Shift)


@needs_realnvp
@needs_planar
def test_build_flow_realnvp_and_planar():
    flow = build_flow("realnvp(masks=4,layers=2,units=8)+planar*2+radial", 3, rng=0)
    assert [type(f).__name__ for f in flow.layers] == ["RealNVP", "Planar", "Planar", "Radial"]
    rnvp = flow.layers[0]
    assert rnvp.num_params == 2 * 4 * (2 * 3 * 8 + 3 + 8 + 1 * 9 * 8)
    # Each repeated layer has its own parameters (Planar's w is random).
    assert not np.array_equal(flow.layers[1].params, flow.layers[2].params)


# -- fit, sample, log-prob --------------------------------------------------------
@pytest.mark.parametrize("fmt", ["npy", "csv"])
def test_fit_sample_log_prob_round_trip(fmt, moons_files, capsys):
    x, tmp = moons_files
    model = tmp / "model.npz"
    status, out, err = run(capsys, "fit", tmp / f"moons.{fmt}", "--flow", "scale+shift",
                           "--out", model, "--method", "lbfgs", "--no-progress")
    assert status == 0, err
    assert "300 points of dim 2" in out and "saved the model" in out
    flow = pf.load(model)
    # scale+shift by maximum likelihood: the data's mean and standard deviation.
    np.testing.assert_allclose(np.abs(flow.params[:2]), x.std(axis=0), rtol=1e-4)

    status, out, err = run(capsys, "sample", model, "-n", 50, "--out", tmp / f"s.{fmt}", "--seed", 1)
    assert status == 0, err
    s = np.load(tmp / "s.npy") if fmt == "npy" else np.loadtxt(tmp / "s.csv", delimiter=",")
    np.testing.assert_allclose(s, flow.sample(50, rng=1), rtol=1e-12)

    status, out, err = run(capsys, "log-prob", model, tmp / f"moons.{fmt}", "--out", tmp / f"lp.{fmt}")
    assert status == 0, err
    lp = np.load(tmp / "lp.npy") if fmt == "npy" else np.loadtxt(tmp / "lp.csv", delimiter=",")
    np.testing.assert_allclose(lp, flow.log_prob(x), rtol=1e-12)


def test_results_go_to_stdout_without_out(moons_files, capsys):
    x, tmp = moons_files
    model = tmp / "m.npz"
    assert run(capsys, "fit", tmp / "moons.npy", "--flow", "shift", "--out", model,
               "--steps", 5)[0] == 0
    status, out, _ = run(capsys, "sample", model, "-n", 4, "--seed", 0)
    assert status == 0 and np.loadtxt(out.splitlines(), delimiter=",").shape == (4, 2)
    status, out, _ = run(capsys, "log-prob", model, tmp / "moons.npy")
    assert status == 0 and np.loadtxt(out.splitlines()).shape == (300,)


@needs_realnvp
def test_fit_a_realnvp_with_adam_and_validation(moons_files, capsys):
    _, tmp = moons_files
    model = tmp / "rnvp"   # ".npz" is appended
    status, out, err = run(capsys, "fit", tmp / "moons.npy", "--flow",
                           "realnvp(masks=2,units=8)+scale+shift", "--out", model,
                           "--steps", 60, "--lr", 0.02, "--batch-size", 100, "--seed", 3,
                           "--validation-split", 0.25, "--patience", 50, "--dtype", "float32")
    assert status == 0, err
    assert "mean log-likelihood (validation)" in out
    flow = pf.load(tmp / "rnvp.npz")
    assert type(flow.layers[0]).__name__ == "RealNVP" and flow.dtype == np.float32


def test_demo_without_matplotlib(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # "import matplotlib" fails
    status, out, err = run(capsys, "demo", "--n", 200, "--steps", 20, "--no-progress")
    assert status == 0, err
    assert "held-out mean log-likelihood" in out and "single Gaussian" in out
    assert "matplotlib is not installed" in out
    assert not (tmp_path / "pyflowcore-demo.png").exists()


def test_demo_writes_a_picture(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    status, out, err = run(capsys, "demo", "--n", 200, "--steps", 20, "--out", tmp_path / "d.png")
    assert status == 0, err
    assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- user errors: status 2, one message on stderr, no traceback -------------------------
def write(path, text):
    path.write_text(text)
    return path


def test_missing_files(tmp_path, capsys):
    status, _, err = run(capsys, "fit", tmp_path / "nope.csv", "--out", tmp_path / "m.npz")
    assert_user_error(status, err, "nope.csv", "does not exist")
    status, _, err = run(capsys, "sample", tmp_path / "nope.npz", "-n", 3)
    assert_user_error(status, err, "model file", "does not exist")
    status, _, err = run(capsys, "log-prob", tmp_path / "nope.npz", tmp_path / "x.csv")
    assert_user_error(status, err, "does not exist")


@pytest.mark.parametrize("name, content, fragments", [
    ("nan.csv", "1,2\n3,nan\n", ["NaN", "row 1"]),
    ("inf.csv", "1,2\ninf,0\n5,6\n", ["infinite", "row 1"]),
    ("words.csv", "x,y\n1,2\nfoo,bar\n", ["not a CSV file of numbers", "foo"]),
    ("ragged.csv", "1,2\n3\n", ["not a CSV file of numbers"]),
    ("empty.csv", "", ["no points"]),
    ("data.txt", "1,2\n", [".npy or .csv"]),
])
def test_bad_data_files(name, content, fragments, tmp_path, capsys):
    path = write(tmp_path / name, content)
    status, _, err = run(capsys, "fit", path, "--flow", "shift", "--out", tmp_path / "m.npz")
    assert_user_error(status, err, *fragments)
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.parametrize("array, fragments", [
    (np.array([[1.0, np.nan]]), ["NaN"]),
    (np.arange(5.0), ["2-D array", "(5,)"]),
    (np.array([["a", "b"]]), ["real numbers"]),
    (np.zeros((0, 2)), ["no points"]),
])
def test_bad_npy_files(array, fragments, tmp_path, capsys):
    np.save(tmp_path / "bad.npy", array)
    status, _, err = run(capsys, "fit", tmp_path / "bad.npy", "--flow", "shift",
                         "--out", tmp_path / "m.npz")
    assert_user_error(status, err, *fragments)


def test_not_an_npy_or_model_file(tmp_path, capsys):
    path = write(tmp_path / "junk.npy", "not numpy")
    status, _, err = run(capsys, "fit", path, "--out", tmp_path / "m.npz")
    assert_user_error(status, err, "cannot read data file")
    path = write(tmp_path / "junk.npz", "not a zip")
    status, _, err = run(capsys, "sample", path, "-n", 3)
    assert_user_error(status, err, "cannot load model")


@pytest.mark.parametrize("damage", ["truncated", "bad_crc", "abstract_flow"])
def test_damaged_model_files(damage, tmp_path, capsys):
    path = tmp_path / "m.npz"
    pf.save(pf.Shift(2), path)
    good = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(good[:len(good) // 2])
    elif damage == "bad_crc":
        data = bytearray(good)
        data[good.rindex(b"\x93NUMPY") + 130] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        arch = {"format": "pyflowcore", "version": 1,
                "flow": {"type": "Flow", "config": {"dim": 2, "num_params": 2}}}
        np.savez(path, architecture=np.array(json.dumps(arch)), params=np.zeros(2))
    status, _, err = run(capsys, "sample", path, "-n", 2)
    assert_user_error(status, err, "m.npz", "not a valid pyflowcore model")
    assert err.count("\n") == 1


@pytest.mark.parametrize("spec, fragment", [
    ("realnvp(masks=4", "cannot read the term"),
    ("glow", "unknown flow 'glow'"),
    ("realnvp(depth=2)", "unknown argument 'depth'"),
    ("scale*0", "repeat count"),
    pytest.param("realnvp(masks=3)", "num_masks", marks=needs_realnvp),  # the constructor's check
])
def test_bad_flow_spec(spec, fragment, moons_files, capsys):
    _, tmp = moons_files
    status, _, err = run(capsys, "fit", tmp / "moons.npy", "--flow", spec, "--out", tmp / "m.npz")
    assert_user_error(status, err, fragment)


@pytest.mark.parametrize("command", ["fit", "sample", "log-prob"])
def test_device_cuda_without_a_gpu(command, moons_files, capsys):
    if pf.cuda_available():
        pytest.skip("a GPU (or the CUDA emulator) is present")
    _, tmp = moons_files
    model = tmp / "m.npz"
    pf.save(pf.Shift(2), model)
    argv = {"fit": ["fit", tmp / "moons.csv", "--out", model],
            "sample": ["sample", model, "-n", 3],
            "log-prob": ["log-prob", model, tmp / "moons.csv"]}[command]
    status, _, err = run(capsys, *argv, "--device", "cuda")
    assert_user_error(status, err, "--device cuda: no usable GPU")


def test_wrong_dimension_for_the_model(moons_files, capsys):
    _, tmp = moons_files
    model = tmp / "m.npz"
    pf.save(pf.Shift(3), model)
    status, _, err = run(capsys, "log-prob", model, tmp / "moons.csv")
    assert_user_error(status, err, "2 columns", "dim 3")


@pytest.mark.parametrize("argv, fragment", [
    (["sample", "m.npz", "-n", "-3"], "integer >= 0"),
    (["sample", "m.npz", "-n", "2", "--seed", "-5"], "argument --seed: expected an integer >= 0"),
    (["fit", "d.csv", "--out", "m.npz", "--seed", "-1"], "argument --seed"),
    (["demo", "--seed", "-3"], "argument --seed"),
    (["sample", "m.npz", "-n", "2", "--seed", "x"], "argument --seed"),
    (["sample", "m.npz"], "-n"),
    (["fit", "d.csv", "--out", "m.npz", "--lr", "0"], "number > 0"),
    (["fit", "d.csv", "--out", "m.npz", "--method", "sgd"], "invalid choice"),
    (["fit", "d.csv"], "--out"),
    (["fit", "d.csv", "--out", "m.npz", "--patience", "3"], "--validation-split"),
    (["frobnicate"], "invalid choice"),
    ([], "COMMAND"),
])
def test_bad_arguments(argv, fragment, capsys):
    status, _, err = run(capsys, *argv)
    assert status == 2 and fragment in err and "Traceback" not in err
    assert err.count("\n") == 1, err   # one line: no usage block


def test_negative_seed_in_a_real_run(moons_files, capsys):
    _, tmp = moons_files
    pf.save(pf.Shift(2), tmp / "m.npz")
    status, _, err = run(capsys, "sample", tmp / "m.npz", "-n", 2, "--seed", -5)
    assert_user_error(status, err, "--seed")
    status, _, err = run(capsys, "fit", tmp / "moons.npy", "--flow", "shift", "--out",
                         tmp / "m2.npz", "--seed", -1)
    assert_user_error(status, err, "--seed")
    assert not (tmp / "m2.npz").exists()


def test_too_many_samples(moons_files, capsys):
    _, tmp = moons_files
    pf.save(pf.Shift(2), tmp / "m.npz")
    status, _, err = run(capsys, "sample", tmp / "m.npz", "-n", 10 ** 30)
    assert_user_error(status, err, "-n 1000000000000000000000000000000")
    status, _, err = run(capsys, "demo", "--n", 10 ** 21, "--steps", 1)
    assert_user_error(status, err, "--n", "too large")


def _out_of_memory(*args, **kwargs):
    raise MemoryError("Unable to allocate 14.6 TiB for an array with shape (1999999999988,)")


@pytest.mark.parametrize("command", ["fit", "sample"])
def test_out_of_memory(command, moons_files, capsys, monkeypatch):
    # Patched rather than real: whether a huge allocation fails at once depends
    # on the machine's overcommit policy.
    _, tmp = moons_files
    pf.save(pf.Shift(2), tmp / "m.npz")
    if command == "fit":
        monkeypatch.setattr(cli, "build_flow", _out_of_memory)
        argv = ["fit", tmp / "moons.npy", "--flow", "realnvp(units=99999999999)",
                "--out", tmp / "m2.npz"]
    else:
        monkeypatch.setattr(pf.Shift, "sample", _out_of_memory)
        argv = ["sample", tmp / "m.npz", "-n", 10 ** 13]
    status, _, err = run(capsys, *argv)
    assert_user_error(status, err, f"pyflowcore {command}: error: ran out of memory",
                      "14.6 TiB")
    assert err.count("\n") == 1


def test_unwritable_output(moons_files, capsys):
    _, tmp = moons_files
    status, _, err = run(capsys, "fit", tmp / "moons.npy", "--flow", "shift", "--steps", 2,
                         "--out", tmp / "no" / "such" / "dir" / "m.npz")
    assert_user_error(status, err, "cannot write model file")
    pf.save(pf.Shift(2), tmp / "m.npz")
    status, _, err = run(capsys, "sample", tmp / "m.npz", "-n", 2, "--out", tmp / "s.json")
    assert_user_error(status, err, ".npy or .csv")


def test_help_exits_zero(capsys):
    status, out, _ = run(capsys, "fit", "--help")
    assert status == 0 and "SPEC" in out and "planar*8+shift" in out
    assert f"at most {MAX_LAYERS} layers" in out and "ASCII digits" in out


def test_python_dash_m_reports_errors_without_a_traceback(tmp_path):
    bad = write(tmp_path / "bad.csv", "1,2\nnan,3\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.run([sys.executable, "-m", "pyflowcore", "fit", str(bad), "--flow", "glow",
                           "--out", str(tmp_path / "m.npz")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "NaN" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""
