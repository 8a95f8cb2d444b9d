"""Saving and loading flows.

A saved flow is one ``.npz`` file with two entries:

``architecture``
    a 0-d unicode array holding JSON: ``{"format": "pyflowcore", "version": 1,
    "flow": SPEC}`` where ``SPEC = {"type": class name, "config": {...}}`` and a
    chain's config lists its layers' specs;
``params``
    the flat parameter vector.

Loading reads both with ``allow_pickle=False``, rebuilds the flow from the
JSON (only classes of ``pyflowcore.flows`` are accepted) and copies the
parameters in, so a file can never run code.
"""

import json
import os

import numpy as np

FORMAT_VERSION = 1


def _flow_types():
    from pyflowcore import flows
    return {name: getattr(flows, name) for name in flows.__all__}


def flow_to_spec(flow):
    """The JSON-able description ``{"type": ..., "config": ...}`` of a flow."""
    return {"type": type(flow).__name__, "config": flow._config()}


def flow_from_spec(spec):
    """Build a flow (with initial parameters) from ``flow_to_spec``'s output."""
    if not isinstance(spec, dict) or set(spec) != {"type", "config"}:
        raise ValueError(f"a flow spec must be {{'type': ..., 'config': {{...}}}}, got {spec!r}")
    types = _flow_types()
    if spec["type"] not in types:
        raise ValueError(f"unknown flow type {spec['type']!r}; expected one of {sorted(types)}")
    config = dict(spec["config"])
    if spec["type"] == "Chain":
        return types["Chain"]([flow_from_spec(s) for s in config["flows"]])
    return types[spec["type"]](**config)


def save(flow, path):
    """Write ``flow`` (architecture and parameters) to one ``.npz`` file.

    Parameters
    ----------
    flow : Flow
    path : str or os.PathLike
        Written as given (NumPy appends ``.npz`` if the name lacks it).
    """
    from pyflowcore.flows import Flow
    if not isinstance(flow, Flow):
        raise TypeError(f"save expects a pyflowcore Flow, got {type(flow).__name__}")
    arch = json.dumps({"format": "pyflowcore", "version": FORMAT_VERSION,
                       "flow": flow_to_spec(flow)})
    params = flow.params
    if flow.device != "cpu":
        params = params.get()
    np.savez(os.fspath(path), architecture=np.array(arch), params=np.asarray(params))


def load(path):
    """Rebuild a flow written by ``save``; never unpickles.

    Returns
    -------
    Flow
        On the CPU, with the saved parameters.
    """
    try:
        data = np.load(os.fspath(path), allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array, not an .npz archive")
        with data:
            entries = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise
    except (OSError, EOFError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read a pyflowcore .npz file: {exc}") from None
    if set(entries) != {"architecture", "params"}:
        raise ValueError(f"{path}: not a pyflowcore file (entries {sorted(entries)})")
    try:
        arch = json.loads(str(entries["architecture"][()]))
    except (ValueError, IndexError) as exc:
        raise ValueError(f"{path}: not a pyflowcore file (bad architecture entry: {exc})") from None
    params = entries["params"]
    if not isinstance(arch, dict) or arch.get("format") != "pyflowcore" or arch.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a pyflowcore file of format version {FORMAT_VERSION}")
    flow = flow_from_spec(arch["flow"])
    flow.set_params(params)
    return flow
