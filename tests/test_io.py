"""``pyflowcore.load`` on damaged files and malformed architectures.

Every such file must raise ``ValueError`` naming the file and what was
expected, never an exception from zipfile, json or a constructor.
"""

import json

import numpy as np
import pytest

import pyflowcore as pf
from pyflowcore.io import MAX_SPEC_DEPTH, flow_from_spec


def saved_chain(tmp_path):
    path = tmp_path / "model.npz"
    pf.save(pf.Chain([pf.Shift(2), pf.ElementwiseScale(2)]), path)
    return path


def write_model(path, architecture, params=np.zeros(4)):
    """An .npz in the layout of ``save`` with the given architecture (JSON text or object)."""
    if not isinstance(architecture, str):
        architecture = json.dumps(architecture)
    np.savez(path, architecture=np.array(architecture), params=params)
    return path


def header(flow):
    return {"format": "pyflowcore", "version": 1, "flow": flow}


SHIFT = {"type": "Shift", "config": {"dim": 2, "dtype": "float64"}}


def nested_chains(depth):
    spec = SHIFT
    for _ in range(depth):
        spec = {"type": "Chain", "config": {"flows": [spec]}}
    return spec


# -- damaged archives -------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "bad_crc"])
def test_damaged_archive(damage, tmp_path):
    good = saved_chain(tmp_path).read_bytes()
    if damage == "truncated":
        data = good[:len(good) // 2]
    else:
        # A byte of the last member's data: the archive still opens, the CRC check fails.
        data = bytearray(good)
        data[good.rindex(b"\x93NUMPY") + 130] ^= 0xFF
        data = bytes(data)
    path = tmp_path / f"{damage}.npz"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=f"{damage}.npz: not a valid pyflowcore model"):
        pf.load(path)


def test_randomly_damaged_archives_raise_value_error(tmp_path):
    good = saved_chain(tmp_path).read_bytes()
    rng = np.random.default_rng(0)
    path = tmp_path / "damaged.npz"
    for _ in range(300):
        data = bytearray(good)
        for i in rng.integers(0, len(data), size=3):
            data[i] = rng.integers(0, 256)
        path.write_bytes(bytes(data))
        try:
            pf.load(path)
        except ValueError as exc:
            assert "damaged.npz" in str(exc)


# -- malformed architectures --------------------------------------------------------
@pytest.mark.parametrize("arch, match", [
    pytest.param({"format": "pyflowcore", "version": 1}, "keys.*'flow'", id="no-flow"),
    pytest.param(header({"type": "Chain", "config": {}}), "Chain must be {'flows'",
                 id="chain-without-flows"),
    pytest.param(header({"type": "Chain", "config": {"flows": []}}), "at least one spec",
                 id="chain-of-nothing"),
    pytest.param(header({"type": "Chain", "config": {"flows": 3}}), "Chain must be {'flows'",
                 id="flows-not-a-list"),
    pytest.param(header({"type": "Shift", "config": 5}), "config of a Shift must be a JSON object",
                 id="config-not-a-dict"),
    pytest.param(header({"type": ["Shift"], "config": {}}), r"unknown flow type \['Shift'\]",
                 id="type-a-list"),
    pytest.param(header({"type": "Flow", "config": {"dim": 2, "num_params": 2}}),
                 "unknown flow type 'Flow'.*'Shift'", id="abstract-base-class"),
    pytest.param(header({"type": "Shift", "config": {"dim": 2, "foo": 1}}),
                 r"Shift takes the keys \['dim', 'dtype'\].*got \['dim', 'foo'\]",
                 id="unknown-keyword"),
    pytest.param(header({"type": "Shift", "config": {"dtype": "float64"}}), "dim required",
                 id="missing-keyword"),
    pytest.param(header({"type": "Shift", "config": {"dim": 2, "rng": 0}}), "takes the keys",
                 id="rng-keyword"),
    pytest.param(header({"type": "Shift", "config": {"dim": "2"}}), "cannot build a Shift.*dim",
                 id="dim-a-string"),
    pytest.param(header({"type": "Shift", "config": {"dim": 10 ** 30}}), "cannot build a Shift",
                 id="dim-too-large"),
    pytest.param(header({"type": "Chain", "config": {"flows": [
        SHIFT, {"type": "Shift", "config": {"dim": 3}}]}}), "cannot build a Chain.*same dim",
        id="chain-layers-disagree"),
    pytest.param(header({"type": "Shift"}), "flow spec must be", id="spec-without-config"),
    pytest.param(header(nested_chains(MAX_SPEC_DEPTH + 1)), "nested more than",
                 id="chains-too-deep"),
    pytest.param('{"format": "pyflowcore", "version": 1, "flow": ' + "[" * 100000
                 + "]" * 100000 + "}", "nested more than", id="json-too-deep"),
    pytest.param(header({"type": "Shift", "config": {"dim": [[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]
                                                        * 5}}),
                 "nested more than|cannot build", id="deep-config-value"),
    pytest.param(dict(header(SHIFT), extra=1), "keys", id="extra-top-level-key"),
])
def test_malformed_architecture(arch, match, tmp_path):
    path = write_model(tmp_path / "bad.npz", arch)
    with pytest.raises(ValueError, match=match) as info:
        pf.load(path)
    assert str(info.value).startswith(f"{path}: not a valid pyflowcore model")


@pytest.mark.parametrize("params, match", [
    (np.zeros(3), "shape"),
    (np.array(["a", "b"]), "real"),
])
def test_parameters_that_do_not_fit(params, match, tmp_path):
    path = write_model(tmp_path / "bad.npz", header(SHIFT), params=params)
    with pytest.raises(ValueError, match=f"not a valid pyflowcore model.*{match}"):
        pf.load(path)


def test_nested_chains_within_the_bound_still_load(tmp_path):
    path = write_model(tmp_path / "deep.npz", header(nested_chains(MAX_SPEC_DEPTH)),
                       params=np.arange(2.0))
    flow = pf.load(path)
    assert type(flow).__name__ == "Chain" and np.array_equal(flow.params, [0.0, 1.0])


def test_a_spec_that_contains_itself():
    spec = {"type": "Chain", "config": {"flows": []}}
    spec["config"]["flows"].append(spec)
    with pytest.raises(ValueError, match="nested more than"):
        flow_from_spec(spec)


def test_every_saved_flow_class_loads(tmp_path):
    # The checks on configs accept exactly what save writes.
    flows = [pf.Shift(3), pf.ElementwiseScale(3, dtype="float32"), pf.Planar(3, rng=0),
             pf.Radial(3, rng=0), pf.RealNVP(3, num_masks=4, units=4, rng=0),
             pf.Chain([pf.Planar(3, rng=1), pf.Shift(3)])]
    for k, flow in enumerate(flows):
        path = tmp_path / f"{k}.npz"
        pf.save(flow, path)
        loaded = pf.load(path)
        assert repr(loaded) == repr(flow)
        np.testing.assert_array_equal(loaded.params, flow.params)
