"""Saving and loading flows.

A saved flow is one ``.npz`` file with two entries:

``architecture``
    a 0-d unicode array holding JSON: ``{"format": "pyflowcore", "version": 1,
    "flow": SPEC}`` where ``SPEC = {"type": class name, "config": {...}}`` and a
    chain's config is ``{"flows": [SPEC, ...]}``, its layers' specs;
``params``
    the flat parameter vector.

Loading reads both with ``allow_pickle=False``, rebuilds the flow from the
JSON (only the concrete flow classes of ``pyflowcore.flows`` are accepted,
with their constructor keywords) and copies the parameters in, so a file can
never run code.  Anything else, a damaged archive included, raises
``ValueError`` naming the file and what was expected.
"""

import inspect
import json
import os
import zipfile
import zlib

import numpy as np

from pyflowcore._validation import to_host

FORMAT_VERSION = 1

# Chains nested in a spec.  ``save`` writes flat chains (``Chain`` splices its
# layers), so one level is all a saved file needs; the bound only keeps a
# hand-made spec (or a dict that contains itself) from recursing without end.
MAX_SPEC_DEPTH = 32
# JSON nesting of an architecture: a spec nested MAX_SPEC_DEPTH deep needs
# 3 * MAX_SPEC_DEPTH + 3 levels.  Deeper JSON is refused before it is looked
# at, as error messages that repr a deeply nested value would recurse too.
MAX_JSON_DEPTH = 3 * MAX_SPEC_DEPTH + 3

# What reading a damaged .npz raises besides OSError and ValueError: zipfile's
# BadZipFile (truncated file, bad CRC, bad headers), RuntimeError and its
# subclass NotImplementedError (an "encrypted" member, an unknown compression
# method or zip version after a flipped bit), zlib.error (a corrupt deflate
# stream in a compressed archive) and EOFError.
_READ_ERRORS = (OSError, EOFError, ValueError, RuntimeError, zipfile.BadZipFile, zlib.error)


def _flow_types():
    """The classes a spec may name: the concrete flows of ``pyflowcore.flows``.

    The base class ``Flow`` (and any class that does not define ``_config``)
    cannot have been saved, so it is refused rather than built half-working.
    """
    from pyflowcore import flows
    from pyflowcore.flows import Flow
    types = {}
    for name in flows.__all__:
        cls = getattr(flows, name)
        if (isinstance(cls, type) and issubclass(cls, Flow) and cls is not Flow
                and cls._config is not Flow._config):
            types[name] = cls
    return types


def _constructor_keywords(cls):
    """``(allowed, required)`` config keys of a leaf flow class.

    ``rng`` is left out: a file holds the parameters, never a seed.
    """
    allowed, required = set(), set()
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "rng":
            continue
        allowed.add(p.name)
        if p.default is p.empty:
            required.add(p.name)
    return allowed, required


def _json_depth(value):
    """Nesting depth of parsed JSON (0 for a scalar), without recursing."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth + 1)
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict)
                                                  else value))
    return deepest


def flow_to_spec(flow):
    """The JSON-able description ``{"type": ..., "config": ...}`` of a flow."""
    return {"type": type(flow).__name__, "config": flow._config()}


def flow_from_spec(spec, _depth=0):
    """Build a flow (with initial parameters) from ``flow_to_spec``'s output.

    Raises
    ------
    ValueError
        For anything but ``{"type": NAME, "config": {...}}`` with ``NAME`` a
        concrete class of ``pyflowcore.flows`` and ``config`` its constructor
        keywords (``{"flows": [spec, ...]}`` for a ``Chain``, nested at most
        ``MAX_SPEC_DEPTH`` deep), or when the constructor refuses the values;
        the message says what was expected.
    """
    if not isinstance(spec, dict) or set(spec) != {"type", "config"}:
        raise ValueError(f"a flow spec must be {{'type': ..., 'config': {{...}}}}, "
                         f"got {_short(spec)}")
    types = _flow_types()
    name, config = spec["type"], spec["config"]
    # A list or dict as the type would be unhashable in the lookup below.
    if not isinstance(name, str) or name not in types:
        raise ValueError(f"unknown flow type {_short(name)}; expected one of {sorted(types)}")
    if not isinstance(config, dict):
        raise ValueError(f"the config of a {name} must be a JSON object, got {_short(config)}")
    if name == "Chain":
        flows = config.get("flows")
        if set(config) != {"flows"} or not isinstance(flows, list) or not flows:
            raise ValueError("the config of a Chain must be {'flows': [spec, ...]} with at least "
                             f"one spec, got {_short(config)}")
        if _depth >= MAX_SPEC_DEPTH:
            raise ValueError(f"chains nested more than {MAX_SPEC_DEPTH} deep")
        layers = [flow_from_spec(s, _depth + 1) for s in flows]
        build, args = types["Chain"], (layers,)
        config = {}
    else:
        allowed, required = _constructor_keywords(types[name])
        unknown, missing = set(config) - allowed, required - set(config)
        if unknown or missing:
            raise ValueError(f"the config of a {name} takes the keys {sorted(allowed)} "
                             f"({', '.join(sorted(required))} required), "
                             f"got {sorted(config, key=str)}")
        build, args = types[name], ()
    try:
        return build(*args, **config)
    except (TypeError, ValueError, OverflowError) as exc:
        # The constructor's own checks (a dim of "3", mismatched chain layers, ...);
        # OverflowError for an integer too large for NumPy.
        raise ValueError(f"cannot build a {name} from its config: {exc}") from None


def _short(value, limit=80):
    """``repr(value)``, cut to ``limit`` characters: a spec can be huge."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
    np.savez(os.fspath(path), architecture=np.array(arch), params=to_host(flow.params))


def load(path):
    """Rebuild a flow written by ``save``; never unpickles.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    Flow
        On the CPU, with the saved parameters.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        If the file is not a valid pyflowcore model: unreadable or damaged,
        other entries, a malformed architecture, or parameters that do not
        fit it.  The message names the file and what was expected.
    """
    path = os.fspath(path)
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array, not an .npz archive")
        with data:
            names = sorted(data.files)
            # Only our two entries are read: a foreign archive may be large.
            entries = ({name: data[name] for name in names}
                       if names == ["architecture", "params"] else None)
    except FileNotFoundError:
        raise
    except _READ_ERRORS as exc:
        raise ValueError(f"{path}: not a valid pyflowcore model: cannot read a pyflowcore "
                         f".npz file: {exc}") from None
    if entries is None:
        raise ValueError(f"{path}: not a pyflowcore file (entries {names}; expected "
                         "['architecture', 'params'])")
    try:
        arch = json.loads(str(entries["architecture"][()]))
    except RecursionError:
        # JSON nested deeper than the parser's recursion limit.
        arch = None
    except (ValueError, IndexError) as exc:
        raise ValueError(f"{path}: not a pyflowcore file (bad architecture entry: {exc})") from None
    if arch is None or _json_depth(arch) > MAX_JSON_DEPTH:
        raise ValueError(f"{path}: not a valid pyflowcore model: its architecture is JSON nested "
                         f"more than {MAX_JSON_DEPTH} levels deep")
    if not isinstance(arch, dict) or arch.get("format") != "pyflowcore" or arch.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a pyflowcore file of format version {FORMAT_VERSION}")
    if set(arch) != {"format", "version", "flow"}:
        raise ValueError(f"{path}: not a valid pyflowcore model: the architecture must hold "
                         f"the keys ['flow', 'format', 'version'], got {sorted(arch)}")
    try:
        flow = flow_from_spec(arch["flow"])
    except ValueError as exc:
        raise ValueError(f"{path}: not a valid pyflowcore model: {exc}") from None
    params = entries["params"]
    try:
        flow.set_params(params)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a valid pyflowcore model: its parameters do not fit "
                         f"the architecture: {exc}") from None
    return flow
