"""The benchmark's comparison logic (``pyflowcore.bench``) on tiny sizes.

Only the NumPy peer runs here (PyTorch and JAX are optional); what is checked
is the machinery: a peer that agrees is timed, one that disagrees is refused,
a workload a peer cannot do and a missing backend are reported as skipped,
and the table lists every row; a peer timed in a worker process of its own
gives the in-process results.
"""

import numpy as np
import pytest

from pyflowcore import _peers, bench

TIMING = {"repeat": 1, "warmup": 0, "min_time": 0.0}


WORKLOADS = [
    bench.Workload("T1", "planar x2 forward+logdet", ("planar", 2), "forward", 64),
    bench.Workload("T2", "planar x2 forward+grad", ("planar", 2), "grad", 64),
    bench.Workload("T3", "planar x2 log_prob", ("planar", 2), "log_prob", 64),
    bench.Workload("T4", "radial x2 forward+logdet", ("radial", 2), "forward", 64, dim=5),
    bench.Workload("T5", "radial x2 forward+grad", ("radial", 2), "grad", 64),
    bench.Workload("T6", "realnvp 2x(1x8) forward+logdet", ("realnvp", 2, 1, 8), "forward", 64),
]


class Perturbed(bench.Backend):
    """The NumPy peer with its results scaled by ``1 + rel``."""

    def __init__(self, rel):
        self.inner, self.rel, self.name = bench.NumpyBackend(), rel, f"numpy*(1+{rel:g})"

    def prepare(self, problem):
        p = self.inner.prepare(problem)
        return bench.Prepared(p.run, lambda out: tuple(r * (1 + self.rel) for r in p.results(out)))


def no_reparameterisation():
    """NumPy ops whose softplus makes ``m(a) = a``, so ``uhat = u``: planar without
    SPEC's invertibility fix (a plausible mistake, wrong by O(1))."""
    ops = _peers.numpy_ops()
    ops.softplus = lambda a: a + 1.0
    wrong = bench.NumpyBackend(ops)
    wrong.name = "numpy-no-uhat"
    return wrong


def by_backend(rows, workload, dtype):
    return {r.backend: r for r in rows if r.workload == workload and r.dtype == dtype}


@pytest.fixture(scope="module")
def rows():
    backends = [bench.PyflowcoreBackend(), bench.NumpyBackend(), Perturbed(1e-7),
                no_reparameterisation(), bench.Disabled("torch", "PyTorch not importable (test)")]
    return bench.compare(WORKLOADS, ["float64", "float32"], backends, **TIMING)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: w.key)
def test_agreeing_peer_is_timed(rows, workload, dtype):
    got = by_backend(rows, workload, dtype)
    ref = got["pyflowcore"]
    assert ref.status == "ok" and ref.ratio == 1.0 and ref.median_s > 0
    peer = got["numpy"]
    if workload.task == "grad" and workload.model[0] != "planar":
        assert peer.status == "skipped" and "no autograd" in peer.note
        return
    assert peer.status == "ok", peer.note
    assert peer.rel_err <= bench.TOLERANCE[dtype]
    assert peer.median_s > 0 and peer.ratio == pytest.approx(peer.median_s / ref.median_s)
    # In process, the peer is timed right after pyflowcore's only pass.
    assert peer.ref_s == ref.median_s


@pytest.mark.parametrize("workload", [w for w in WORKLOADS if w.model[0] == "planar"],
                         ids=lambda w: w.key)
def test_disagreeing_peers_are_refused(rows, workload):
    # 1e-7 is far below float32's tolerance but a thousand times float64's.
    perturbed = by_backend(rows, workload, "float64")["numpy*(1+1e-07)"]
    assert perturbed.status == "disagrees" and perturbed.median_s is None
    assert perturbed.rel_err == pytest.approx(1e-7, rel=1e-3)
    assert "not timed" in perturbed.note
    for dtype in ("float64", "float32"):
        wrong = by_backend(rows, workload, dtype)["numpy-no-uhat"]
        if workload.task == "forward":
            assert wrong.status == "disagrees" and wrong.median_s is None
            assert wrong.rel_err > 1e-2


def test_missing_backend_is_skipped_with_reason(rows):
    skipped = [r for r in rows if r.backend == "torch"]
    assert len(skipped) == 2 * len(WORKLOADS)
    assert all(r.status == "skipped" and "not importable" in r.note for r in skipped)


def test_table_lists_every_row(rows):
    table = bench.format_table(rows)
    lines = table.splitlines()
    assert lines[0].startswith("| workload | N | dtype | backend | median | ratio |")
    assert len(lines) == 2 + len(rows)
    assert sum("| disagrees |" in line for line in lines) == sum(r.status == "disagrees"
                                                                  for r in rows)
    assert "| T1 planar x2 forward+logdet | 64 | float32 | numpy |" in table
    text = bench.report(rows, [("memory copy", "1 GB/s", "")], [bench.NumpyBackend()], "tiny")
    assert table in text and "| memory copy | 1 GB/s |" in text


@pytest.fixture(scope="module")
def isolated_rows():
    backends = bench.isolated([bench.PyflowcoreBackend(), bench.NumpyBackend(),
                               bench.Disabled("torch", "PyTorch not importable (test)")])
    assert [type(b) for b in backends] == [bench.PyflowcoreBackend, bench.Isolated,
                                           bench.Disabled]
    rows = bench.compare(WORKLOADS[:4], ["float64", "float32"], backends, **TIMING)
    return backends, rows


def test_isolated_peer_matches_in_process_peer(rows, isolated_rows):
    backends, iso = isolated_rows
    assert backends[1].describe() == f"numpy {np.__version__}"
    assert backends[1].unavailable() is None
    assert len(iso) == 3 * 2 * 4
    for w in WORKLOADS[:4]:
        for dtype in ("float64", "float32"):
            got, same = by_backend(iso, w, dtype), by_backend(rows, w, dtype)
            assert list(got) == ["pyflowcore", "numpy", "torch"]
            peer = got["numpy"]
            # Same inputs (through .npy files) and the same arithmetic as in process.
            assert peer.status == same["numpy"].status == "ok"
            assert peer.rel_err == same["numpy"].rel_err
            assert peer.median_s > 0
            # pyflowcore is timed just before and just after the worker's job: the
            # ratio divides by the mean of those two passes.
            assert peer.ratio == pytest.approx(peer.median_s / peer.ref_s)
            assert peer.ref_s > 0 and got["pyflowcore"].median_s > 0
            assert got["torch"].status == "skipped" and "not importable" in got["torch"].note


@pytest.mark.parametrize("with_in_process_peer", [False, True])
def test_isolated_peer_samples_alternate_with_pyflowcore(monkeypatch, with_in_process_peer):
    # Every sample this process times returns the next number 1, 2, ... in
    # the order they are taken: per job, pyflowcore's own pass and the
    # in-process peer's (only when there is one), then per job the worker's
    # samples, each followed by one of pyflowcore's; the ratio must divide
    # by the median of those.
    counter, events = iter(range(1, 1000)), []

    def our_sample(fn, number):
        events.append("ours")
        return float(next(counter))

    peer_sample = bench._WorkerProcess.sample

    def logged_peer_sample(self):
        events.append("peer")
        return peer_sample(self)

    monkeypatch.setattr(bench, "time_sample", our_sample)
    monkeypatch.setattr(bench._WorkerProcess, "sample", logged_peer_sample)
    monkeypatch.setattr(bench, "WORKER_SETTLE_S", 0.0)
    jobs, repeat = WORKLOADS[:2], 3
    backends = [bench.PyflowcoreBackend(), bench.Isolated("numpy")]
    if with_in_process_peer:
        backends.append(Perturbed(1e-13))  # agrees, so it is timed
    rows = bench.compare(jobs, ["float64"], backends, **{**TIMING, "repeat": repeat})
    first_loop = 2 * repeat * len(jobs) if with_in_process_peer else 0
    assert events[first_loop:] == ["peer", "ours"] * repeat * len(jobs)
    for j, w in enumerate(jobs):
        got = by_backend(rows, w, "float64")
        between = first_loop + repeat * j + 2   # the middle of its 3 samples
        assert got["numpy"].ref_s == between
        assert got["numpy"].median_s > 0
        assert got["numpy"].ratio == pytest.approx(got["numpy"].median_s / between)
        assert got["pyflowcore"].median_s == between
        if with_in_process_peer:
            peer = next(r for name, r in got.items() if name not in ("pyflowcore", "numpy"))
            assert (peer.ref_s, peer.median_s) == (2 * repeat * j + 2, 2 * repeat * j + 5)


def test_only_builtin_peers_are_isolated():
    with pytest.raises(ValueError, match="not a built-in peer"):
        bench.Isolated("numpy*(1+1e-07)")
    custom = [bench.PyflowcoreBackend(), Perturbed(1e-7), no_reparameterisation()]
    assert all(a is b for a, b in zip(bench.isolated(custom), custom, strict=True))


def test_dead_worker_fails_its_rows(monkeypatch):
    monkeypatch.setattr(bench.sys, "executable", "false")
    rows = bench.compare(WORKLOADS[:1], ["float64"],
                         [bench.PyflowcoreBackend(), bench.Isolated("numpy")], **TIMING)
    assert [r.status for r in rows] == ["ok", "failed"]
    assert "worker process exited with code 1" in rows[1].note


def test_relative_error():
    ref = (np.array([1.0, -2.0, 0.0]), np.array(3.0))
    assert bench.relative_error(ref, ref) == 0.0
    assert bench.relative_error((ref[0] + [0.0, 2e-6, 0.0], ref[1]), ref) == pytest.approx(1e-6)
    assert bench.relative_error((ref[0] * np.nan, ref[1]), ref) == np.inf
    assert bench.relative_error((ref[0][:2], ref[1]), ref) == np.inf
    assert bench.relative_error((np.zeros(2),), (np.zeros(2),)) == 0.0


def test_find_workload():
    assert bench.find_workload("W3", "grad").title.startswith("radial x16 forward+grad")
    assert [bench.find_workload("W5", "forward", n).n for n in (None, 1, 64)] == [1, 1, 64]
    with pytest.raises(ValueError, match="no workload W5 forward with n=2"):
        bench.find_workload("W5", "forward", 2)
    with pytest.raises(ValueError, match="no workload W1 log_prob"):
        bench.find_workload("W1", "log_prob")
