"""Communication graphs of a fleet: who exchanges masks with whom.

A :class:`Topology` is an undirected simple graph on nodes ``0..n-1`` stored as
sorted neighbour tuples (immutable and hashable). Builders make the usual families;
random ones (k-regular, Erdős–Rényi) draw from a :class:`numpy.random.SeedSequence`
keyed by the caller's seed and the attempt number, and are redrawn until connected,
so the same seed always gives the same graph. :func:`parse_topology` reads the CLI's
spellings; :func:`from_file` reads a 0/1 adjacency matrix such as the paper's
20-node graph.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from dslth_edge.errors import UsageError
from dslth_edge.data.textmatrix import read_int_matrix

__all__ = [
    "TopologyError",
    "Topology",
    "TOPOLOGY_FORMS",
    "ring",
    "torus",
    "torus_for",
    "grid",
    "kregular",
    "erdos_renyi",
    "full",
    "star",
    "from_adjacency",
    "from_file",
    "parse_topology",
]

TOPOLOGY_FORMS: tuple[str, ...] = (
    "ring",
    "torus",
    "torus:RxC",
    "grid",
    "grid:RxC",
    "kregular:K",
    "er:P",
    "erdos-renyi:P",
    "full",
    "star",
    "file:PATH",
    "PATH (adjacency matrix file)",
)

# Redraw budgets for the random builders; a spec that keeps failing is almost
# certainly infeasible (p far below ln(n)/n), so say so instead of looping.
_MAX_ATTEMPTS = 200


class TopologyError(UsageError):
    """A topology spec or adjacency file is invalid, or a graph cannot be built."""


@dataclass(frozen=True)
class Topology:
    """An undirected graph without self loops on nodes ``0..n-1``.

    ``adjacency_list[i]`` is the sorted tuple of node i's neighbours; construction
    checks that it is symmetric, in range and loop-free.
    """

    n: int
    adjacency_list: tuple[tuple[int, ...], ...]
    name: str = "custom"

    def __post_init__(self) -> None:
        # Accept any nested sequence but store tuples, so the graph stays immutable.
        object.__setattr__(self, "adjacency_list", tuple(tuple(int(j) for j in nb) for nb in self.adjacency_list))
        if self.n < 1:
            raise TopologyError(f"a topology needs at least one node, got n={self.n}")
        if len(self.adjacency_list) != self.n:
            raise TopologyError(f"{self.name}: {len(self.adjacency_list)} neighbour lists for n={self.n}")
        sets = [set(nb) for nb in self.adjacency_list]
        for i, nb in enumerate(self.adjacency_list):
            if tuple(sorted(sets[i])) != tuple(nb):
                raise TopologyError(f"{self.name}: neighbours of node {i} must be sorted and distinct")
            for j in nb:
                if not 0 <= j < self.n:
                    raise TopologyError(f"{self.name}: node {i} has neighbour {j} outside 0..{self.n - 1}")
                if j == i:
                    raise TopologyError(f"{self.name}: node {i} is its own neighbour (self loop)")
                if i not in sets[j]:
                    raise TopologyError(f"{self.name}: edge {i}-{j} is not symmetric")

    # ------------------------------------------------------------------ queries
    def neighbours(self, i: int) -> tuple[int, ...]:
        """Node i's neighbours, ascending."""
        return self.adjacency_list[i]

    def degree(self, i: int) -> int:
        return len(self.adjacency_list[i])

    def degrees(self) -> tuple[int, ...]:
        return tuple(len(nb) for nb in self.adjacency_list)

    @property
    def num_edges(self) -> int:
        return sum(self.degrees()) // 2

    def edges(self) -> list[tuple[int, int]]:
        """Each undirected edge once, as (i, j) with i < j, sorted."""
        return [(i, j) for i, nb in enumerate(self.adjacency_list) for j in nb if i < j]

    @property
    def adjacency(self) -> np.ndarray:
        """The (n x n) symmetric bool adjacency matrix (a fresh array each call)."""
        a = np.zeros((self.n, self.n), dtype=bool)
        for i, nb in enumerate(self.adjacency_list):
            a[i, list(nb)] = True
        return a

    def is_connected(self) -> bool:
        """True if every node can reach every other (breadth-first search)."""
        seen = {0}
        queue = deque([0])
        while queue:
            for j in self.adjacency_list[queue.popleft()]:
                if j not in seen:
                    seen.add(j)
                    queue.append(j)
        return len(seen) == self.n

    def mixing_matrix(self, weights: str = "uniform") -> np.ndarray:
        """The (n x n) float64 averaging matrix W of one gossip step (x <- W x).

        * ``"uniform"``: W_ij = 1/d_i for each neighbour j and W_ii = 0: node i takes
          the plain mean of its neighbours' values, itself excluded, as the reference
          MCE-PL code averages neighbours' masks. Rows sum to 1 (row stochastic);
          columns do too only on regular graphs. An isolated node keeps its own value
          (W_ii = 1), as there is nothing to average.
        * ``"metropolis"``: Metropolis-Hastings weights W_ij = 1/(1 + max(d_i, d_j))
          for neighbours, W_ii = 1 - sum_j W_ij. Symmetric and doubly stochastic, so
          repeated mixing converges to the network-wide average on a connected graph.
        """
        deg = self.degrees()
        w = np.zeros((self.n, self.n), dtype=np.float64)
        if weights == "uniform":
            for i, nb in enumerate(self.adjacency_list):
                if nb:
                    w[i, list(nb)] = 1.0 / len(nb)
                else:
                    w[i, i] = 1.0
        elif weights == "metropolis":
            for i, nb in enumerate(self.adjacency_list):
                for j in nb:
                    w[i, j] = 1.0 / (1.0 + max(deg[i], deg[j]))
                w[i, i] = 1.0 - w[i].sum()
        else:
            raise TopologyError(f"unknown mixing weights {weights!r}; use 'uniform' or 'metropolis'")
        return w

    def describe(self) -> dict[str, object]:
        """A JSON-ready summary for a run's config.json."""
        deg = self.degrees()
        return {
            "name": self.name,
            "n": self.n,
            "edges": self.num_edges,
            "degree_min": min(deg),
            "degree_max": max(deg),
            "connected": self.is_connected(),
        }


def _from_edges(n: int, edges: Iterable[tuple[int, int]], name: str) -> Topology:
    nbrs: list[set[int]] = [set() for _ in range(n)]
    for i, j in edges:
        if i != j:
            nbrs[i].add(j)
            nbrs[j].add(i)
    return Topology(n, tuple(tuple(sorted(s)) for s in nbrs), name)


def _check_n(n: int, what: str, minimum: int = 1) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < minimum:
        raise TopologyError(f"{what} needs an integer number of nodes >= {minimum}, got {n!r}")
    return int(n)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TopologyError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _rng(seed: int, tag: int, attempt: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(_check_seed(seed), spawn_key=(tag, attempt)))


# ------------------------------------------------------------------------ builders


def ring(n: int) -> Topology:
    """Cycle 0-1-...-(n-1)-0 (n=2: one edge; n=1: no edges)."""
    n = _check_n(n, "ring")
    return _from_edges(n, ((i, (i + 1) % n) for i in range(n)), f"ring({n})")


def torus(rows: int, cols: int) -> Topology:
    """2-D torus: node r*cols+c links to its 4 wrap-around grid neighbours.

    Degree 4 when rows, cols >= 3; a side of 2 merges the two wrap neighbours into one
    and a side of 1 has none, so ``torus(1, n)`` is ``ring(n)``.
    """
    rows, cols = _check_n(rows, "torus rows"), _check_n(cols, "torus cols")
    edges = []
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            edges.append((i, ((r + 1) % rows) * cols + c))
            edges.append((i, r * cols + (c + 1) % cols))
    return _from_edges(rows * cols, edges, f"torus({rows}x{cols})")


def _square_factors(n: int) -> tuple[int, int]:
    """rows <= cols with rows*cols = n and rows as large as possible."""
    rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    return rows, n // rows


def torus_for(n: int) -> Topology:
    """The most square torus on n nodes (a prime n gives a 1 x n torus: a ring)."""
    return torus(*_square_factors(_check_n(n, "torus")))


def grid(rows: int, cols: int) -> Topology:
    """2-D grid without wrap-around (degrees 2..4)."""
    rows, cols = _check_n(rows, "grid rows"), _check_n(cols, "grid cols")
    edges = []
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            if r + 1 < rows:
                edges.append((i, i + cols))
            if c + 1 < cols:
                edges.append((i, i + 1))
    return _from_edges(rows * cols, edges, f"grid({rows}x{cols})")


def full(n: int) -> Topology:
    """Complete graph: every node talks to every other."""
    n = _check_n(n, "full")
    return _from_edges(n, ((i, j) for i in range(n) for j in range(i + 1, n)), f"full({n})")


def star(n: int) -> Topology:
    """Star with node 0 at the centre."""
    n = _check_n(n, "star")
    return _from_edges(n, ((0, i) for i in range(1, n)), f"star({n})")


def _pair_stubs(n: int, k: int, rng: np.random.Generator) -> set[tuple[int, int]] | None:
    """One try at a random simple k-regular graph by stub pairing (Steger-Wormald).

    Shuffle the open stubs, pair neighbours in the shuffled list, keep the pairs that
    make a new non-loop edge and reshuffle the rest; give up (None) when no valid pair
    is left among the remaining stubs.
    """
    edges: set[tuple[int, int]] = set()
    stubs = [v for v in range(n) for _ in range(k)]
    while stubs:
        rng.shuffle(stubs)
        rest: list[int] = []
        for a, b in zip(stubs[::2], stubs[1::2]):
            e = (min(a, b), max(a, b))
            if a != b and e not in edges:
                edges.add(e)
            else:
                rest += [a, b]
        if not rest:
            break
        left = sorted(set(rest))
        if not any((a, b) not in edges for x, a in enumerate(left) for b in left[x + 1 :]):
            return None
        stubs = rest
    return edges


def kregular(n: int, k: int, seed: int) -> Topology:
    """A random connected k-regular graph (every node has exactly k neighbours).

    Needs 0 <= k < n and n*k even; k >= 2 for connectivity when n > 2. k = 2 draws a
    uniformly random Hamiltonian cycle (the only connected 2-regular graphs); other k
    pair stubs and redraw with seeds derived from (seed, attempt) until the graph is
    simple and connected, up to a bounded number of attempts.
    """
    n = _check_n(n, "kregular")
    seed = _check_seed(seed)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < n:
        raise TopologyError(f"kregular: k must be an integer in 0..{n - 1} for n={n}, got {k!r}")
    k = int(k)
    if (n * k) % 2:
        raise TopologyError(f"kregular: n*k must be even, got n={n}, k={k}")
    name = f"kregular({n},{k})"
    if n == 1:
        return Topology(1, ((),), name)
    if k < 2 and not (n == 2 and k == 1):
        raise TopologyError(f"kregular: k={k} cannot connect {n} nodes; use k >= 2")
    if k == n - 1:
        return Topology(n, full(n).adjacency_list, name)
    if k == 2:
        order = _rng(seed, 1, 0).permutation(n)
        return _from_edges(n, ((int(order[i]), int(order[(i + 1) % n])) for i in range(n)), name)
    for attempt in range(_MAX_ATTEMPTS):
        edges = _pair_stubs(n, k, _rng(seed, 1, attempt))
        if edges is None:
            continue
        topo = _from_edges(n, edges, name)
        if topo.is_connected():
            return topo
    raise TopologyError(f"kregular: no connected {k}-regular graph on {n} nodes after {_MAX_ATTEMPTS} attempts")


def erdos_renyi(n: int, p: float, seed: int) -> Topology:
    """G(n, p) conditioned on being connected.

    Each attempt includes every pair independently with probability p; attempts use
    seeds derived from (seed, attempt) until one is connected, up to a bound. Below
    about p = ln(n)/n connected draws are rare and the bound is reached.
    """
    n = _check_n(n, "erdos-renyi")
    seed = _check_seed(seed)
    if not (isinstance(p, (int, float, np.floating)) and 0 < float(p) <= 1):
        raise TopologyError(f"erdos-renyi: p must be in (0, 1], got {p!r}")
    p = float(p)
    name = f"er({n},{p:g})"
    iu = np.triu_indices(n, 1)
    for attempt in range(_MAX_ATTEMPTS):
        keep = _rng(seed, 2, attempt).random(iu[0].size) < p
        topo = _from_edges(n, zip(iu[0][keep].tolist(), iu[1][keep].tolist()), name)
        if topo.is_connected():
            return topo
    hint = math.log(n) / n if n > 1 else 1.0
    raise TopologyError(
        f"erdos-renyi: no connected G({n}, {p:g}) in {_MAX_ATTEMPTS} draws; "
        f"raise p (connectivity needs p above about ln(n)/n = {hint:.3f})"
    )


def from_adjacency(matrix: np.ndarray | Sequence[Sequence[int]], name: str = "custom") -> Topology:
    """A topology from a square, symmetric, 0/1, zero-diagonal matrix."""
    a = np.asarray(matrix)
    problem = _adjacency_problem(a)
    if problem:
        raise TopologyError(f"{name}: {problem}")
    n = a.shape[0]
    return Topology(n, tuple(tuple(int(j) for j in np.flatnonzero(a[i])) for i in range(n)), name)


def _adjacency_problem(a: np.ndarray) -> str | None:
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        return f"adjacency matrix must be square and non-empty, got shape {a.shape}"
    if not np.isin(a, (0, 1)).all():
        bad = np.argwhere(~np.isin(a, (0, 1)))[0]
        return f"entry ({bad[0]}, {bad[1]}) is {a[bad[0], bad[1]]!r}, entries must be 0 or 1"
    diag = np.flatnonzero(np.diagonal(a))
    if diag.size:
        return f"diagonal must be zero (no self loops), node {diag[0]} links to itself"
    asym = np.argwhere(a != a.T)
    if asym.size:
        i, j = asym[0]
        return f"not symmetric: entry ({i}, {j}) is {a[i, j]} but ({j}, {i}) is {a[j, i]}"
    return None


def from_file(path: str | Path) -> Topology:
    """Read a whitespace-separated 0/1 adjacency matrix (rows = nodes; '#' comments)."""
    p = Path(path)
    a = read_int_matrix(p, "adjacency file", TopologyError)
    problem = _adjacency_problem(a)
    if problem:
        raise TopologyError(f"adjacency file {p}: {problem}")
    return from_adjacency(a, name=p.name)


# -------------------------------------------------------------------------- parsing


def _bad(spec: str, why: str) -> TopologyError:
    return TopologyError(f"bad topology {spec!r}: {why}; valid forms: {', '.join(TOPOLOGY_FORMS)}")


def _dims(spec: str, arg: str, n: int) -> tuple[int, int]:
    r, sep, c = arg.lower().partition("x")
    try:
        rows, cols = int(r), int(c)
    except ValueError:
        raise _bad(spec, f"expected RxC, got {arg!r}") from None
    if not sep or rows < 1 or cols < 1:
        raise _bad(spec, f"expected RxC with positive R and C, got {arg!r}")
    if rows * cols != n:
        raise _bad(spec, f"{rows}x{cols} = {rows * cols} nodes, but the fleet has {n}")
    return rows, cols


def parse_topology(spec: str, n: int, seed: int) -> Topology:
    """Build the topology a CLI string names, for ``n`` nodes.

    Forms: "ring", "torus" (most square), "torus:RxC", "grid", "grid:RxC",
    "kregular:K", "er:P" / "erdos-renyi:P", "full", "star", and "file:PATH" or a bare
    path to an adjacency matrix file, whose size must equal ``n``. ``seed`` fixes the
    random families.
    """
    n = _check_n(n, "a topology")
    text = str(spec).strip()
    kind, sep, arg = text.partition(":")
    kind, arg = kind.strip().lower(), arg.strip()
    if not sep:
        simple = {"ring": ring, "full": full, "complete": full, "star": star, "torus": torus_for}
        if kind in simple:
            return simple[kind](n)
        if kind == "grid":
            return grid(*_square_factors(n))
    else:
        if kind == "torus":
            return torus(*_dims(text, arg, n))
        if kind == "grid":
            return grid(*_dims(text, arg, n))
        if kind in ("kregular", "k-regular", "regular"):
            try:
                k = int(arg)
            except ValueError:
                raise _bad(text, f"K must be an integer, got {arg!r}") from None
            return kregular(n, k, seed)
        if kind in ("er", "erdos-renyi", "erdos_renyi"):
            try:
                p = float(arg)
            except ValueError:
                raise _bad(text, f"P must be a number, got {arg!r}") from None
            return erdos_renyi(n, p, seed)
        if kind == "file":
            return _sized_file(Path(arg), n)
    # Anything else is taken as a path if it names an existing file or looks like one.
    path = Path(text)
    if path.is_file():
        return _sized_file(path, n)
    if "/" in text or "\\" in text or path.suffix:
        raise TopologyError(f"adjacency file {text} not found")
    raise _bad(text, "unknown form")


def _sized_file(path: Path, n: int) -> Topology:
    topo = from_file(path)
    if topo.n != n:
        raise TopologyError(f"adjacency file {path} describes {topo.n} nodes, but the fleet has {n}")
    return topo
