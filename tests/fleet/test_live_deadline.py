"""The round deadline on a real network: patient with online neighbours, counting misses (no sleeps: a fake clock)."""

from __future__ import annotations

from dslth_edge.fleet.deadline import AdaptiveDeadline, LiveDeadline, StartupDeadline, heavy_round


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _policy(online: set[int], clock: Clock, state: dict[str, int], **kw) -> LiveDeadline:
    return LiveDeadline(AdaptiveDeadline(max_s=60.0, min_s=2.0, warmup=3), current_round=lambda: state["round"],
                        expected=lambda: {1, 2}, online=lambda: online,
                        heavy=lambda k: heavy_round(k, rounds=10, eval_every=5, checkpoint_every=0),
                        max_s=60.0, clock=clock, **kw)


def test_heavy_rounds_follow_the_plan_schedule() -> None:
    kinds = [heavy_round(k, rounds=10, eval_every=5, checkpoint_every=4) for k in range(10)]
    assert [k for k, h in enumerate(kinds) if h] == [4, 5, 8, 9]  # checkpoint after 3 and 7, eval after 4, the last


def _run_cheap_rounds(policy: LiveDeadline, clock: Clock, state: dict[str, int], n: int) -> None:
    for k in range(n):
        state["round"] = k
        policy.next_s()
        clock.t += 0.1
        policy.observe(0.1, complete=True)
        assert policy.settle({1, 2}) == []
        clock.t += 0.4


def test_online_neighbours_are_not_cut_after_cheap_rounds() -> None:
    """The issue's failure: waits learned from cheap rounds (3 x 0.1 s + 1 s, at least 2 s) cut the
    neighbours' late frames of the last round while they were still evaluating."""
    clock, state = Clock(), {"round": 0}
    online: set[int] = {1, 2}
    policy = _policy(online, clock, state)
    _run_cheap_rounds(policy, clock, state, 9)
    assert policy.inner.next_s() == 2.0  # what the adaptive deadline alone would allow
    state["round"] = 9  # the last round
    assert policy.next_s() >= 60.0
    policy.observe(30.0, complete=True)  # the frames came after 30 s: heard, no miss
    assert policy.settle({1, 2}) == [] and policy.misses == 0


def test_absent_neighbour_gets_the_adaptive_deadline_and_a_miss() -> None:
    clock, state = Clock(), {"round": 0}
    online: set[int] = {1, 2}
    policy = _policy(online, clock, state)
    _run_cheap_rounds(policy, clock, state, 5)
    online.discard(2)  # its last will: gone
    state["round"] = 5
    assert policy.next_s() == 2.0
    policy.observe(2.0, complete=False)
    assert policy.settle({1}) == [2] and policy.misses == 1
    assert policy.settle({1}) == [2] and policy.misses == 1  # counted once per round


def test_patience_grows_with_the_nodes_own_rounds() -> None:
    """Contention: a node whose rounds take 40 s (hundreds of nodes share its process) waits 3 x that."""
    clock, state = Clock(), {"round": 0}
    policy = _policy({1, 2}, clock, state)
    for k in range(4):
        state["round"] = k
        policy.next_s()
        clock.t += 40.0
        policy.observe(1.0, complete=True)
    assert policy.patience_s(4) == 120.0
    state["round"] = 4  # a hung (online) neighbour: this round waits the patience out …
    policy.next_s()
    clock.t += 120.0
    policy.observe(120.0, complete=False)
    state["round"] = 5
    policy.next_s()
    assert policy.patience_s(5) == 120.0  # … and does not raise the next round's patience


def test_heavy_round_waits_are_learned_apart() -> None:
    clock, state = Clock(), {"round": 0}
    policy = _policy({1, 2}, clock, state)
    _run_cheap_rounds(policy, clock, state, 5)  # round 5 follows the evaluation after round 4
    state["round"] = 5
    policy.next_s()
    policy.observe(50.0, complete=True)
    assert policy.inner.next_s() == 2.0  # the cheap rounds' policy did not learn the heavy wait
    assert policy.patience_s(9) == 150.0  # the next heavy round (the last) allows 3 x 50 s


def test_fixed_deadline_is_kept_and_misses_counted() -> None:
    from dslth_edge.fleet.deadline import FixedDeadline

    state = {"round": 0}
    policy = LiveDeadline(FixedDeadline(5.0), current_round=lambda: state["round"], expected=lambda: {1},
                          online=lambda: {1}, heavy=lambda k: True, patient=False, clock=Clock())
    assert StartupDeadline(policy, 0.0).next_s() == 5.0
    assert policy.settle(set()) == [1] and policy.misses == 1


def test_startup_wrapper_passes_misses_through() -> None:
    """What Node._collect can ask whichever policy it holds (the fleet wraps LiveDeadline in StartupDeadline)."""
    clock, state = Clock(), {"round": 0}
    live = _policy(set(), clock, state)  # nobody online
    wrapped = StartupDeadline(live, 120.0)
    assert wrapped.next_s() == 120.0
    assert wrapped.settle({1}) == [2] and live.misses == 1
    assert StartupDeadline(AdaptiveDeadline(), 0.0).settle(set()) == []


def test_patience_covers_a_starved_process_from_round_one() -> None:
    """Under heavy load a node's own work takes 80 s a round: round 1 already allows 3 x that,
    though round 0 (the start-up) is not learned from (the 100-node bench at load 30 missed
    neighbours at 60 s in rounds 1 and 2 before)."""
    clock, state = Clock(), {"round": 0}
    policy = _policy({1, 2}, clock, state)
    wrapped = StartupDeadline(policy, 180.0)
    wrapped.next_s()
    clock.t += 100.0  # round 0 waits 100 s for the fleet's start-up …
    wrapped.observe(100.0, complete=True)
    clock.t += 80.0  # … then 80 s of its own work: finish round 0, compute round 1
    state["round"] = 1
    assert wrapped.next_s() == 240.0
    assert policy.inner.next_s() == 60.0  # nothing learned from the start-up wait


def test_patience_covers_a_turn_of_every_node_the_process_hosts() -> None:
    """At 1,000 nodes a worker's node whose turn came early waited 120 s for a neighbour whose
    turn in its own worker came last (2 misses): an online neighbour is given factor x the
    process's cycle, however little this node's own round took."""
    clock, state = Clock(), {"round": 0}
    cycle = {"s": 0.0}
    policy = _policy({1, 2}, clock, state, cycle_s=lambda: cycle["s"])
    _run_cheap_rounds(policy, clock, state, 3)
    state["round"] = 3
    assert policy.next_s() == 60.0  # cheap own rounds, no cycle measured yet
    cycle["s"] = 90.0  # 250 nodes on one slot at 0.36 s a pass
    state["round"] = 4
    assert policy.next_s() == 270.0


def test_step_slots_cycle_is_the_hosted_nodes_time_in_a_slot_over_the_slots() -> None:
    import threading

    from dslth_edge.fleet.node import StepSlots

    clock = Clock()
    slots = StepSlots(count=2, hosted=10, clock=clock)
    assert slots.cycle_s() == 0.0

    def node_round(passes: list[float]) -> None:
        for seconds in passes:
            with slots:
                clock.t += seconds
        slots.round_done()

    for passes in ([1.0], [0.5, 1.5]):  # one node's round in a slot: 1 s, the other's 2 s
        t = threading.Thread(target=node_round, args=(passes,))
        t.start()
        t.join()
    assert slots.cycle_s() == 1.5 * 10 / 2  # mean 1.5 s a node, 10 nodes, 2 at a time
