"""Text budget and intervals (issue 14): n against error, timings, coverage, budget placement.

Two matrices:

- ``synthetic``: K = 1,000 x N = 10,000 with 50 families (`workshop.synthetic`); times the
  `text_selection` computation (curve + draw) and the interval computations (neighbours'
  bootstrap with the paired test, closed-form SE of every pair) at that size.
- ``zoo``: the demo zoo scored in float32 on the embedded corpus (the ``.npz`` that
  ``scripts/measure_kl_regime.py --scores`` writes; variant rows, ``@...``, are left out).
  For each zoo model a selection is drawn by LS from the *other* families' rows, the model's
  row is cut to it and placed; its nearest neighbour is compared with the full-N one.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_text_budget.py --zoo-scores S.npz \\
        --out benchmarks/text_budget.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # workshop/ is used from the checkout: it is not installed

from modelmap.geometry.centering import clip_global, double_centre
from modelmap.geometry.intervals import (
    bootstrap_interval,
    half_split_coverage,
    neighbour_intervals,
    normal_interval,
    two_kl_standard_errors,
)
from modelmap.geometry.kl import nearest_neighbours, two_kl_nats
from modelmap.geometry.textbudget import (
    budget_error_curve,
    n_needed,
    partial_row_distances,
    select_texts,
    summarise_curve,
    weighted_bootstrap_two_kl,
)
from workshop.synthetic import synthetic_loglik


def curve_block(Q, families, target, n_seeds=10, max_queries=200):
    t0, c0 = time.perf_counter(), time.process_time()
    curve = budget_error_curve(
        Q, families, target_rel_error=target, n_seeds=n_seeds, max_queries=max_queries
    )
    summary = summarise_curve(curve)
    needed = n_needed(summary, target)
    sel = select_texts(Q, needed.get("ls") or Q.shape[1], "ls", seed=42)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "K": Q.shape[0],
        "N": Q.shape[1],
        "target_rel_error": target,
        "n_needed": needed,
        "ls_over_uniform": (needed["ls"] / needed["uniform"])
        if needed.get("ls") and needed.get("uniform")
        else None,
        "budget_draws": sel.n_draws,
        "text_selection_wall_s": wall,
        "text_selection_cpu_s": cpu,
        "table": summary.to_dicts(),
    }


def interval_block(Q, B=200):
    t0, c0 = time.perf_counter(), time.process_time()
    idx, _ = nearest_neighbours(Q, 5)
    iv = neighbour_intervals(Q, idx, B, 0.95)
    t_nn, c_nn = time.perf_counter() - t0, time.process_time() - c0
    t1, c1 = time.perf_counter(), time.process_time()
    D = two_kl_nats(Q)
    low, high = normal_interval(D, two_kl_standard_errors(Q), 0.95)
    t_pairs, c_pairs = time.perf_counter() - t1, time.process_time() - c1
    return {
        "neighbours_bootstrap_B": B,
        "neighbours_wall_s": t_nn,
        "neighbours_cpu_s": c_nn,
        "pairs_closed_form_wall_s": t_pairs,
        "pairs_closed_form_cpu_s": c_pairs,
        "nearest_distinguishable_fraction": float(iv["distinguishable"].mean()),
    }


def zoo_placement(L, keys, families):
    """Leave-one-family-out budget placement of each zoo model: nearest neighbour agreement."""
    clipped, thr = clip_global(L, 2.0)
    Q = double_centre(clipped)
    D = two_kl_nats(Q)
    np.fill_diagonal(D, np.inf)
    fams = np.array(families)
    rows = []
    summary = curve_block(Q, families, 0.05, max_queries=len(keys))
    n_budget = summary["n_needed"]["ls"] or Q.shape[1]
    for i, key in enumerate(keys):
        others = np.flatnonzero(fams != fams[i])
        sel = select_texts(Q[others], n_budget, "ls", seed=42)
        mapped = np.flatnonzero(np.arange(len(keys)) != i)
        sq = partial_row_distances(L[i, sel.index], clipped[mapped], sel.index, sel.weight, thr)
        est = sq / Q.shape[1]
        samples = weighted_bootstrap_two_kl(
            L[i, sel.index],
            clipped[mapped][:, sel.index],
            sel.count,
            sel.probability,
            thr,
            Q.shape[1],
            400,
            np.random.default_rng(i),
        )
        lo, hi = bootstrap_interval(est, samples, 0.95)
        order = np.argsort(est)
        full_nn = keys[int(np.argmin(D[i]))]
        budget_nn = keys[mapped[order[0]]]
        rows.append(
            {
                "model": key,
                "full_nearest": full_nn,
                "budget_nearest": budget_nn,
                "same": full_nn == budget_nn,
                "budget_2kl_nats": float(est[order[0]]),
                "budget_2kl_interval": [float(lo[order[0]]), float(hi[order[0]])],
                "budget_second": keys[mapped[order[1]]],
                "budget_second_2kl_nats": float(est[order[1]]),
                "budget_second_interval": [float(lo[order[1]]), float(hi[order[1]])],
            }
        )
    return n_budget, rows, summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo-scores", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--skip-synthetic", action="store_true")
    args = ap.parse_args()
    out: dict = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "load_average_at_start": os.getloadavg(),
    }
    if not args.skip_synthetic:
        L, fams = synthetic_loglik(K=1000, N=10_000)
        Q = double_centre(clip_global(L, 2.0)[0])
        out["synthetic"] = curve_block(Q, fams, 0.05)
        out["synthetic"]["intervals"] = interval_block(Q)
        Ls, fs = synthetic_loglik(K=40, N=2000, n_families=4, seed=1)
        Qs = double_centre(clip_global(Ls, 2.0)[0])
        pairs = np.array(np.triu_indices(40, 1)).T
        out["synthetic"]["coverage"] = [
            half_split_coverage(Qs, pairs, method=m, B=300)
            for m in ("normal", "bootstrap", "percentile")
        ]
        print(json.dumps({k: v for k, v in out["synthetic"].items() if k != "table"}, indent=1))
    if args.zoo_scores:
        z = np.load(args.zoo_scores)
        keys = sorted(k for k in z.files if "@" not in k and "seed1" not in k)
        L = np.stack([z[k] for k in keys])
        families = [k.split("-")[0] for k in keys]  # "small/gpt2-ft-bible" -> "small/gpt2"
        n_budget, rows, summary = zoo_placement(L, keys, families)
        Q = double_centre(clip_global(L, 2.0)[0])
        pairs = np.array(np.triu_indices(len(keys), 1)).T
        out["zoo"] = summary | {
            "families": sorted(set(families)),
            "budget_texts": n_budget,
            "placement": rows,
            "placement_same_nearest": sum(r["same"] for r in rows),
            "coverage": [
                half_split_coverage(Q, pairs, method=m, B=300)
                for m in ("normal", "bootstrap", "percentile")
            ],
        }
        print(
            json.dumps(
                {k: v for k, v in out["zoo"].items() if k not in ("table", "placement")}, indent=1
            )
        )
    args.out.write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
