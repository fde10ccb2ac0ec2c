"""Reassembly state is bounded per sender: one sender opening many chunk sets evicts only
its own; frame ids are unpredictable; extra whole-frame magics pass through whole."""

from __future__ import annotations

from dslth_edge.wire import Chunker, Reassembler


def test_one_source_cannot_evict_another_sources_set() -> None:
    r = Reassembler(1000, max_pending=8, max_pending_bytes=4000, max_pending_per_source=2)
    chunker = Chunker(220)
    honest = chunker.split(b"DSLM" + bytes(range(200)) * 4)
    assert r.feed("honest", honest[0]) is None
    for i in range(100):  # the flooder's sets never complete
        r.feed("flooder", chunker.split(b"DSLM" + bytes([i]) * 900)[0])
        assert r.pending_of("flooder")[0] <= 2 and r.pending_bytes <= 4000
    out = [r.feed("honest", part) for part in honest[1:]]
    assert out[-1] == b"DSLM" + bytes(range(200)) * 4 and r.pending_of("honest") == (0, 0)
    assert r.evicted >= 98


def test_a_source_byte_limit_bounds_its_sets() -> None:
    r = Reassembler(1000, max_bytes_per_source=1500, max_pending_per_source=10)
    chunker = Chunker(220)
    for i in range(10):
        for part in chunker.split(b"DSLM" + bytes([i]) * 900)[:4]:
            r.feed("a", part)
        assert r.pending_of("a")[1] <= 1500


def test_frame_ids_are_unpredictable() -> None:
    chunker = Chunker(100)
    ids = [int.from_bytes(chunker.split(bytes(300))[0][12:16], "little") for _ in range(50)]
    assert len(set(ids)) == 50 and sorted(ids) != ids  # not a counter


def test_whole_magics_pass_whole() -> None:
    r = Reassembler(100, whole_magics=(b"DSLM", b"DSLS"))
    assert r.feed("a", b"DSLS sealed") == b"DSLS sealed"
