"""Tests for dslth_edge.fleet.topology: builders, parsing, adjacency files, mixing matrices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dslth_edge.errors import UsageError
from dslth_edge.fleet.topology import (
    Topology,
    TopologyError,
    erdos_renyi,
    from_adjacency,
    from_file,
    full,
    grid,
    kregular,
    parse_topology,
    ring,
    star,
    torus,
    torus_for,
)

# The paper's files live beside the checkout (../shared/paper); the repository never copies them.
_PAPER = Path(__file__).resolve().parents[3] / "shared" / "paper"
PAPER_ADJ = (_PAPER if _PAPER.is_dir() else Path("/work/shared/paper")) / "adjacency_20.txt"
needs_paper = pytest.mark.skipif(not PAPER_ADJ.is_file(), reason=f"paper adjacency file not found at {PAPER_ADJ}")

FAST = settings(max_examples=30, deadline=None)


def assert_simple_symmetric(t: Topology) -> None:
    a = t.adjacency
    assert a.shape == (t.n, t.n) and a.dtype == bool
    assert (a == a.T).all() and not a.diagonal().any()
    for i in range(t.n):
        assert t.neighbours(i) == tuple(np.flatnonzero(a[i]).tolist())
        assert t.degree(i) == len(t.neighbours(i))


# ------------------------------------------------------------ hand-checked graphs


def test_ring_small():
    t = ring(5)
    assert t.adjacency_list == ((1, 4), (0, 2), (1, 3), (2, 4), (0, 3))
    assert t.is_connected() and t.num_edges == 5
    assert ring(2).adjacency_list == ((1,), (0,))
    assert ring(1).adjacency_list == ((),) and ring(1).is_connected()


def test_torus_small():
    t = torus(3, 3)
    assert set(t.degrees()) == {4}
    assert t.neighbours(0) == (1, 2, 3, 6)
    assert t.neighbours(4) == (1, 3, 5, 7)
    assert torus(1, 6).adjacency_list == ring(6).adjacency_list
    assert torus(2, 3).neighbours(0) == (1, 2, 3)  # 2 rows: up and down are the same node
    assert torus_for(12).name == "torus(3x4)" and torus_for(7).name == "torus(1x7)"


def test_grid_full_star():
    g = grid(2, 3)
    assert g.adjacency_list == ((1, 3), (0, 2, 4), (1, 5), (0, 4), (1, 3, 5), (2, 4))
    f = full(4)
    assert f.num_edges == 6 and set(f.degrees()) == {3}
    s = star(4)
    assert s.adjacency_list == ((1, 2, 3), (0,), (0,), (0,))
    assert s.edges() == [(0, 1), (0, 2), (0, 3)]


def test_disconnected_detected():
    t = from_adjacency([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]])
    assert not t.is_connected()


def test_topology_validation():
    with pytest.raises(TopologyError, match="not symmetric"):
        Topology(2, ((1,), ()))
    with pytest.raises(TopologyError, match="self loop"):
        Topology(2, ((0,), ()))
    with pytest.raises(TopologyError, match="outside"):
        Topology(2, ((5,), ()))
    t = Topology(3, [[1], [0, 2], [1]])  # lists are accepted and frozen into tuples
    assert t.adjacency_list == ((1,), (0, 2), (1,)) and hash(t) == hash(Topology(3, ((1,), (0, 2), (1,))))
    assert issubclass(TopologyError, UsageError) and TopologyError.exit_code == 2


# ------------------------------------------------------------------ mixing


def test_mixing_uniform_ring():
    w = ring(4).mixing_matrix("uniform")
    expected = np.array([[0, 0.5, 0, 0.5], [0.5, 0, 0.5, 0], [0, 0.5, 0, 0.5], [0.5, 0, 0.5, 0]])
    assert np.array_equal(w, expected)
    w = star(3).mixing_matrix()
    assert np.allclose(w.sum(axis=1), 1) and w[0, 1] == 0.5 and w[1, 0] == 1.0 and w[0, 0] == 0
    assert np.array_equal(ring(1).mixing_matrix(), [[1.0]])


def test_mixing_metropolis_star_by_hand():
    w = star(3).mixing_matrix("metropolis")
    # degrees 2, 1, 1: W_0j = 1/(1+2) = 1/3, W_00 = 1/3, W_jj = 2/3
    expected = np.array([[1 / 3, 1 / 3, 1 / 3], [1 / 3, 2 / 3, 0], [1 / 3, 0, 2 / 3]])
    assert np.allclose(w, expected)


def test_mixing_bad_weights():
    with pytest.raises(TopologyError, match="uniform.*metropolis"):
        ring(3).mixing_matrix("bogus")


@FAST
@given(n=st.integers(2, 25), p=st.floats(0.3, 1.0), seed=st.integers(0, 2**32))
def test_metropolis_doubly_stochastic(n, p, seed):
    w = erdos_renyi(n, p, seed).mixing_matrix("metropolis")
    assert np.allclose(w, w.T)
    assert np.allclose(w.sum(axis=0), 1) and np.allclose(w.sum(axis=1), 1)
    assert (w >= 0).all()
    # connected + positive diagonal somewhere: mixing converges to the average
    x = np.arange(n, dtype=float)
    for _ in range(2000):
        x = w @ x
    assert np.allclose(x, (n - 1) / 2, atol=1e-3)


# ------------------------------------------------------------ random builders


@FAST
@given(n=st.integers(3, 30), k=st.integers(2, 8), seed=st.integers(0, 2**32))
def test_kregular_connected_regular(n, k, seed):
    k = min(k, n - 1)
    if (n * k) % 2:
        with pytest.raises(TopologyError, match="n\\*k must be even"):
            kregular(n, k, seed)
        return
    t = kregular(n, k, seed)
    assert_simple_symmetric(t)
    assert set(t.degrees()) == {k} and t.is_connected()
    assert t == kregular(n, k, seed)


@FAST
@given(n=st.integers(1, 30), p=st.floats(0.25, 1.0), seed=st.integers(0, 2**32))
def test_erdos_renyi_connected_deterministic(n, p, seed):
    t = erdos_renyi(n, p, seed)
    assert_simple_symmetric(t)
    assert t.is_connected() and t.n == n
    assert t.adjacency_list == erdos_renyi(n, p, seed).adjacency_list


def test_random_builders_depend_on_seed():
    assert kregular(20, 4, 0).adjacency_list != kregular(20, 4, 1).adjacency_list
    assert erdos_renyi(20, 0.3, 0).adjacency_list != erdos_renyi(20, 0.3, 1).adjacency_list


def test_random_builder_errors():
    with pytest.raises(TopologyError, match="k must be an integer in 0..4"):
        kregular(5, 5, 0)
    with pytest.raises(TopologyError, match="k=1 cannot connect"):
        kregular(6, 1, 0)
    assert kregular(2, 1, 0).adjacency_list == ((1,), (0,))
    assert kregular(5, 4, 0).adjacency_list == full(5).adjacency_list
    with pytest.raises(TopologyError, match="raise p"):
        erdos_renyi(60, 0.005, 0)
    with pytest.raises(TopologyError, match="p must be in"):
        erdos_renyi(5, 0.0, 0)


# ------------------------------------------------------------ adjacency files


@needs_paper
def test_paper_graph():
    t = from_file(PAPER_ADJ)
    assert t.n == 20 and t.name == "adjacency_20.txt"
    assert_simple_symmetric(t)
    assert min(t.degrees()) == 2 and max(t.degrees()) == 14
    assert t.is_connected()
    assert parse_topology(str(PAPER_ADJ), 20, 0) == t
    assert parse_topology(f"file:{PAPER_ADJ}", 20, 0) == t
    with pytest.raises(TopologyError, match="describes 20 nodes, but the fleet has 10"):
        parse_topology(str(PAPER_ADJ), 10, 0)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("0 1\n1 0\n0 0\n", "must be square"),
        ("0 1 0\n1 0\n0 0 0\n", "different lengths"),
        ("0 1\n0 0\n", "not symmetric: entry (0, 1) is 1 but (1, 0) is 0"),
        ("1 0\n0 0\n", "diagonal must be zero"),
        ("0 2\n2 0\n", "entries must be 0 or 1"),
        ("0 a\n1 0\n", "line 1 holds a non-integer"),
        ("\n# only a comment\n", "empty"),
    ],
)
def test_bad_adjacency_files(tmp_path, text, problem):
    f = tmp_path / "graph.txt"
    f.write_text(text)
    with pytest.raises(TopologyError) as info:
        from_file(f)
    assert str(f) in str(info.value) and problem in str(info.value)


def test_missing_adjacency_file(tmp_path):
    with pytest.raises(TopologyError, match="cannot read"):
        from_file(tmp_path / "nope.txt")
    with pytest.raises(TopologyError, match="not found"):
        parse_topology(str(tmp_path / "nope.txt"), 4, 0)


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    "spec, n, expected",
    [
        ("ring", 6, ring(6)),
        ("RING", 6, ring(6)),
        ("full", 4, full(4)),
        ("complete", 4, full(4)),
        ("star", 5, star(5)),
        ("torus", 12, torus(3, 4)),
        ("torus:2x6", 12, torus(2, 6)),
        ("grid", 6, grid(2, 3)),
        ("kregular:3", 10, kregular(10, 3, 7)),
        ("er:0.5", 10, erdos_renyi(10, 0.5, 7)),
        ("erdos-renyi:0.5", 10, erdos_renyi(10, 0.5, 7)),
    ],
)
def test_parse_topology(spec, n, expected):
    assert parse_topology(spec, n, seed=7) == expected


@pytest.mark.parametrize(
    "spec, why",
    [
        ("hypercube", "unknown form"),
        ("kregular:x", "K must be an integer"),
        ("er:lots", "P must be a number"),
        ("torus:3x3", "3x3 = 9 nodes, but the fleet has 12"),
        ("torus:3by4", "expected RxC"),
    ],
)
def test_parse_topology_errors(spec, why):
    with pytest.raises(TopologyError) as info:
        parse_topology(spec, 12, 0)
    assert why in str(info.value)
    assert "valid forms: ring, torus" in str(info.value)


@FAST
@given(spec=st.text(max_size=12))
def test_parse_topology_never_crashes(spec):
    try:
        t = parse_topology(spec, 6, 0)
    except TopologyError:
        return
    assert t.n == 6
