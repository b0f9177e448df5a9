"""The science functions behind the full refresh and the placement, at scale, one process each.

    python benchmarks/bench_geometry.py --models 10000 --texts 10000 [--stability-seeds 5]

A synthetic K x N float32 L with family structure (bases; fine-tunes near their base; a
strength offset per model; a difficulty per text; a few catastrophic texts) is written to a
temporary folder; each step then runs in its own process, so that its wall time and peak
RSS (``ru_maxrss`` of that process) are its own. Steps: the clip percentile and column means
(`Centring.fit`), writing the clipped L and Q, the top-10 neighbours, the t-SNE map, placing
1 new model (its 2KL to every model, its neighbours and its map position), the stable
re-embedding after adding 1% of models, the regression report (4 targets) and the
leakage screen. Prints one JSON object; with ``--stability-seeds`` it also measures the
`stability` figures (scale.json) at that K and writes them with ``--write-scale``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def synthetic_L(
    K: int, N: int, seed: int = 0, family_size: int = 20, n_fam: int | None = None
) -> np.ndarray:
    """K x N float32 log-likelihoods (nats); model i is in family ``i % n_fam`` (default
    ``K // family_size`` families)."""
    rng = np.random.default_rng(seed)
    n_fam = n_fam or max(1, K // family_size)
    difficulty = rng.normal(-250, 60, N).astype(np.float32)
    L = np.empty((K, N), dtype=np.float32)
    bases = {}
    for i in range(K):
        f = i % n_fam
        if f not in bases:
            bases[f] = rng.normal(0, 4, N).astype(np.float32)
        L[i] = (
            difficulty
            + bases[f]
            + rng.normal(0, 1.0, N).astype(np.float32)
            + np.float32(rng.normal(0, 15))
        )
    bad = rng.integers(0, K * N, K * N // 5000)
    L.reshape(-1)[bad] -= 2000  # catastrophic texts: what the clipping is for
    return L


def families(K: int, family_size: int = 20) -> np.ndarray:
    return np.arange(K) % max(1, K // family_size)


def _step(name: str, folder: Path) -> dict:
    from modelmap.geometry.kl import nearest_neighbours
    from modelmap.geometry.mapping import embed_2d, embed_stable, place_on_map
    from modelmap.geometry.placement import Centring, nearest_of_rows, two_kl_to_rows

    L = np.load(folder / "L.npy", mmap_mode="r")
    K, N = L.shape
    out: dict = {}
    t0 = time.perf_counter()
    if name == "centring":
        c = Centring(percentile=2.0).fit(L)
        c.save(folder / "centring.npz")
        out["clip_threshold_nats"] = c.clip_value
    elif name == "write_q":
        c = Centring.load(folder / "centring.npz")
        Q = np.lib.format.open_memmap(folder / "Q.npy", "w+", np.float32, (K, N))
        C = np.lib.format.open_memmap(folder / "Lc.npy", "w+", np.float32, (K, N))
        c.transform_into(L, Q, C)
        Q.flush()
        C.flush()
    elif name == "neighbours":
        Q = np.load(folder / "Q.npy", mmap_mode="r")
        idx, _ = nearest_neighbours(Q, 10)
        np.save(folder / "nn.npy", idx)
        fam = families(K)
        out["nn1_same_family"] = float((fam[idx[:, 0]] == fam).mean())
    elif name == "tsne":
        Q = np.load(folder / "Q.npy", mmap_mode="r")
        xy, method = embed_2d(Q, seed=42)
        np.save(folder / "xy.npy", xy)
        out["method"] = method
    elif name == "place_new_model":
        c = Centring.load(folder / "centring.npz")
        Q = np.load(folder / "Q.npy", mmap_mode="r")
        xy = np.load(folder / "xy.npy")
        new = np.load(folder / "L_new.npy")[:1]
        d = two_kl_to_rows(Q, c.transform(new))
        idx, _ = nearest_of_rows(d, 10)
        pos = place_on_map(xy, d)
        fam = families(K)
        out["neighbours_same_family"] = float((fam[idx[0]] == 0).mean())
        near = np.argsort(np.linalg.norm(xy - pos[0], axis=1))[:10]
        out["map_neighbours_same_family"] = float((fam[near] == 0).mean())
    elif name == "stable_reembedding":
        new = np.load(folder / "L_new.npy")
        both = np.vstack([np.asarray(L), new])
        Q2 = Centring().fit(both).transform(both).astype(np.float32)
        xy = np.load(folder / "xy.npy")
        xy2 = embed_stable(Q2, xy, np.arange(K), seed=1)
        np.save(folder / "xy_stable.npy", xy2)
    elif name == "regression":
        from modelmap.reports.regression import evaluate, fit, reduce_rows

        Q = np.load(folder / "Q.npy", mmap_mode="r")
        fam = families(K)
        rng = np.random.default_rng(1)
        # Scores set by the family (as the base model sets most of a fine-tune's ability)
        # plus the model's position along Q's first direction, plus noise.
        red = reduce_rows(Q)
        z1 = red.Z[:, 0] / red.Z[:, 0].std()
        y = {
            f"task{t}": np.clip(
                50 + 10 * rng.normal(size=fam.max() + 1)[fam] + 3 * z1 + rng.normal(0, 3, K),
                0,
                100,
            )
            for t in range(4)
        }
        mean_ll = np.asarray(L.mean(axis=1), dtype=np.float64)
        rep = evaluate(
            Q, mean_ll, y, [str(f) for f in fam], [str(i) for i in range(K)], reduction=red
        )
        fit(Q, y, reduction=red)
        q = rep.table.filter(rep.table["features"] == "Q")
        out["pearson_r_kfold"] = q.filter(q["cv"] == "kfold")["pearson_r"].to_list()
        out["exact"] = red.exact
    elif name == "leakage":
        from modelmap.reports.leakage import screen

        rng = np.random.default_rng(2)
        per_byte = np.asarray(L.mean(axis=1), dtype=np.float64) / 972
        bench = 50 + 100 * (per_byte - per_byte.mean()) + rng.normal(0, 2, K)
        rep = screen([str(i) for i in range(K)], per_byte, bench)
        out["n_flagged"] = len(rep.flagged)
    else:
        raise SystemExit(f"unknown step {name}")
    out["wall_s"] = time.perf_counter() - t0
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


STEPS = [
    "centring",
    "write_q",
    "neighbours",
    "tsne",
    "place_new_model",
    "stable_reembedding",
    "regression",
    "leakage",
]


def stability(K: int, N: int, seeds: int) -> dict:
    """The `stability` figures: 1% more models, a stable re-embedding vs the previous map."""
    from modelmap.geometry.kl import nearest_neighbours
    from modelmap.geometry.mapping import embed_2d, embed_stable
    from modelmap.geometry.placement import Centring
    from modelmap.geometry.stability import displacement_frac, knn_preservation

    disp, gaps = [], []
    for seed in range(seeds):
        L = synthetic_L(K + K // 100, N, seed=100 + seed)
        old = L[:K]
        xy_old, _ = embed_2d(Centring().fit(old).transform(old).astype(np.float32), seed=seed)
        Q = Centring().fit(L).transform(L).astype(np.float32)
        xy = embed_stable(Q, xy_old, np.arange(K), seed=seed)
        fresh, _ = embed_2d(Q, seed=seed + 1000)
        nn, _ = nearest_neighbours(Q, 10)
        disp.append(displacement_frac(xy_old, xy[:K]))
        gaps.append(knn_preservation(nn, fresh) - knn_preservation(nn, xy))
        print(f"seed {seed}: displacement {disp[-1]:.4f}, knn10 gap {gaps[-1]:+.4f}", flush=True)
    return {
        "models": K,
        "texts": N,
        "added_fraction": 0.01,
        "seeds": seeds,
        "median_displacement_frac": float(np.mean(disp)),
        "median_displacement_frac_per_seed": disp,
        "knn10_preservation_gap": float(np.mean(gaps)),
        "knn10_preservation_gap_per_seed": gaps,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--texts", type=int, default=10000)
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--stability-seeds", type=int, default=0)
    ap.add_argument("--stability-models", type=int, default=None)
    ap.add_argument("--write-scale", action="store_true", help="update benchmarks/scale.json")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        print(json.dumps(_step(args.step, Path(args.dir))))
        return
    K, N = args.models, args.texts
    result: dict = {"models": K, "texts": N, "steps": {}}
    with tempfile.TemporaryDirectory(prefix="bench_geometry_") as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        # K models, then 1% more: the next model of families 0, 1, ... (same families).
        both = synthetic_L(K + K // 100, N, n_fam=len(np.unique(families(K))))
        np.save(folder / "L.npy", both[:K])
        np.save(folder / "L_new.npy", both[K:])
        del both
        result["generate_s"] = time.perf_counter() - t
        for step in [s for s in args.steps.split(",") if s]:
            proc = subprocess.run(
                [sys.executable, __file__, "--step", step, "--dir", tmp],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode:
                result["steps"][step] = {"error": proc.stderr[-2000:]}
            else:
                result["steps"][step] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(step, json.dumps(result["steps"][step]), file=sys.stderr, flush=True)
    if args.stability_seeds:
        result["stability"] = stability(args.stability_models or K, N, args.stability_seeds)
        if args.write_scale:
            path = HERE / "scale.json"
            data = json.loads(path.read_text()) if path.exists() else {}
            data["stability"] = {
                k: result["stability"][k]
                for k in (
                    "models",
                    "added_fraction",
                    "median_displacement_frac",
                    "knn10_preservation_gap",
                )
            } | {
                "texts": N,
                "seeds": args.stability_seeds,
                "command": " ".join(["python", "benchmarks/bench_geometry.py", *sys.argv[1:]]),
            }
            tmp_path = path.with_suffix(".json.tmp")
            tmp_path.write_text(json.dumps(data, indent=1) + "\n")
            tmp_path.replace(path)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
