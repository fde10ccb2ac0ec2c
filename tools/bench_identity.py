#!/usr/bin/env python3
"""What per-node identities cost: sealing (sign) + opening (verify) one round's mask frame,
against one paper-CNN round of the same node on this machine.

    .venv/bin/python tools/bench_identity.py [--dataset synthetic] [--rounds 3] [--reps 300] [--json]

Target (issue 14): Ed25519 sign + verify per frame <= 1 % of a paper-CNN round.
A node signs one frame per round and verifies one per neighbour; the figure per
neighbour is the verify time alone, printed too. Wire version 2 adds the base digest
of a delta frame (SHA-256 of the packed base masks), computed once by the sender and
once per receiver: timed here as well, in every mode the same.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dslth_edge.fleet.plan import FleetOptions, make_node, plan_fleet
from dslth_edge.transport.identity import Identity, generate_keys
from dslth_edge.wire import mask_digest


def _median_s(fn, reps: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="synthetic", help="synthetic (default) or fashion-mnist")
    ap.add_argument("--rounds", type=int, default=3, help="paper-CNN rounds timed (median)")
    ap.add_argument("--reps", type=int, default=300, help="seal/open repetitions per mode (median)")
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)

    plan = plan_fleet(FleetOptions(nodes=2, topology="ring", dataset=args.dataset, model="paper-cnn", keep=args.keep,
                                   rounds=args.rounds + 1, eval_every=0, fleet_id="bench"))
    node = make_node(plan, 0, None, None)
    node.start()
    node.run_round()  # warm-up
    round_s = _median_s(node.run_round, args.rounds)
    frame = node.exchange.encode(node.current_masks(), node.round)  # a key frame: the largest

    masks = [m.numpy() for m in node.current_masks()]
    digest_s = _median_s(lambda: mask_digest(masks), args.reps)
    out: dict[str, object] = {"dataset": args.dataset, "paper_cnn_round_s": round_s, "frame_bytes": len(frame),
                              "torch_threads": 1, "base_digest_us": digest_s * 1e6,
                              "base_digest_pct_of_round": 100 * digest_s / round_s}
    with tempfile.TemporaryDirectory() as tmp:
        generate_keys("bench", 2, tmp)
        ids = {
            "ed25519": [Identity.ed25519(fleet="bench", node_id=i, roster_path=Path(tmp) / "roster.json",
                                         key_path=Path(tmp) / f"node-{i}.key") for i in (0, 1)],
            "hmac": [Identity.hmac(fleet="bench", node_id=i, key=b"k" * 32) for i in (0, 1)],
            "crc": [Identity.crc(fleet="bench", node_id=i) for i in (0, 1)],
        }
        for mode, (me, peer) in ids.items():
            sealed = me.seal("mask", 1, frame)
            assert peer.open(sealed, sender=0, kind="mask").payload == frame
            seal_s = _median_s(lambda me=me: me.seal("mask", 1, frame), args.reps)
            open_s = _median_s(lambda peer=peer, sealed=sealed: peer.open(sealed, sender=0, kind="mask"), args.reps)
            out[mode] = {"seal_us": seal_s * 1e6, "open_us": open_s * 1e6,
                         "sign_plus_verify_pct_of_round": 100 * (seal_s + open_s) / round_s,
                         "overhead_bytes": me.overhead}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"paper-CNN round ({args.dataset}, 1 thread): {round_s * 1e3:.1f} ms; key frame {len(frame)} bytes")
    print(f"base digest of a delta (sender once, each receiver once): {digest_s * 1e6:.1f} us "
          f"= {100 * digest_s / round_s:.4f} % of a round (+8 bytes/frame)")
    for mode in ("ed25519", "hmac", "crc"):
        m = out[mode]
        assert isinstance(m, dict)
        print(f"{mode:8s} seal {m['seal_us']:8.1f} us  open {m['open_us']:8.1f} us  "
              f"= {m['sign_plus_verify_pct_of_round']:.4f} % of a round  (+{m['overhead_bytes']} bytes/payload)")


if __name__ == "__main__":
    main()
