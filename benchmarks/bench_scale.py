"""The platform at Hub scale: K models through the real daemon, sensor and UI (not a test).

    python benchmarks/bench_scale.py --models 1000 --texts 10000 [--out benchmarks/scale.json]

On a fresh platform (a DAGSTER_HOME with the committed dagster.yaml, data and MLflow store in a
temporary folder, a corpus of `--texts` texts materialized by the real `corpus` asset):

1. a local Hub (`workshop.hub_server --synthetic-models K`) lists K synthetic models, and one
   `hub_models_sensor` tick runs over that listing before the models are partitions
   (`sensor_tick`, variant `discovery`: pages through the whole listing, takes its cap);
2. the K keys become `models` partitions through `modelmap register`'s function
   (`register_partitions`);
3. a synthetic scorer with family structure writes K likelihood files exactly as the
   `likelihood` asset does (`StorageResource.write_likelihood`, the one format of
   `modelmap.likelihoods`), and K `benchmark_scores` files with the Open LLM Leaderboard v1
   benchmarks; both are recorded as runless materializations with the metadata the real
   assets record;
4. a second sensor tick over the listing, now of known models at the sha they were scored at
   (`sensor_tick`, variant `steady`: looks up every model's scored revision);
5. the real code server, `modelmap-daemon` and `dagster-webserver` start (`workshop.platform`);
   the daemon's automation refreshes `coordinates`, `kl_table`, `model_map`, `regression_report`
   and `leakage_report`. Measured: each asset's step time and the peak RSS of its run process
   (sampled every 0.25 s), the automation ticks (`automation_tick`: the tick that requested the
   refresh, and the longest of the others), and `full_refresh`: from the start of the tick that
   requested the refresh to the last downstream materialization;
6. `ui_partitions_page` (the `likelihood` asset's partitions tab) and `ui_asset_graph` load in
   headless Chromium, warm (one visit first, then the median of `--ui-repeats` visits).

The synthetic scorer: families of `--family-size` models, a base and fine-tunes
(`synth-fNNNNN/base`, `.../ft-NNN`). L[i, s] = a_i d_s + b_f[s] + t_i[s] + e_i[s]: text
difficulty d_s (nats, proportional to its bytes), model strength a_i, a family vector b_f
(sd 8 nats), a fine-tune's domain shift t_i (+3% of |d_s| on one domain) and noise e_i (sd 2
nats). So every fine-tune's nearest neighbour is in its own family, which is checked from
`kl_table`'s neighbours (`nearest_in_family`). Benchmark scores follow strength and the family
vector, so the ridge on Q has something to find.

Results: a summary on stdout, and the `runs` rows for this K and N in `--out` (read, replace
this K and N's rows, write: the file's other keys belong to other benchmarks). Each row has
the 1-minute load average of the machine when it was measured (`load_1m`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform as pyplatform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import psutil
from dagster._core.instance.ref import InstanceRef

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # workshop/ is used from the checkout: it is not installed

from modelmap.likelihoods import likelihood_frame
from modelmap.reports.benchmarks import OPEN_LLM_V1, SCORE_COLUMNS, SUITE_OPEN_LLM, empty_scores
from modelmap.storage import write_parquet
from modelmap_assets.automation.hub_sensor import hub_models_sensor
from modelmap_assets.cli.main import materialize_corpus, register
from modelmap_assets.definitions import DOWNSTREAM
from modelmap_assets.instance.launcher import run_worker_pid
from resources.settings import build_resources
from workshop.hub_server import synthetic_keys, synthetic_sha
from workshop.localhttp import free_port, wait_until_up
from workshop.platform import CODE_SERVER, local_platform

DOWNSTREAM_NAMES = [a.key.to_user_string() for a in DOWNSTREAM]
# The refresh is done when these have materialized and no run over all models is in progress.
CORE = ("coordinates", "kl_table", "model_map", "regression_report", "leakage_report")
REPORTS = ("regression_report", "leakage_report", "lineage_report")


def load_1m() -> float:
    return round(os.getloadavg()[0], 2)


# ------------------------------------------------------------------------------------------
# The synthetic scorer


class SyntheticScorer:
    """Log-likelihood vectors (nats) with family structure for `keys` on a corpus.

    `n_bytes` (N,) and `domains` (N,) describe the corpus texts. Rows come out one model at a
    time (`row(i)`), so K x N never has to be in memory here.
    """

    def __init__(self, keys: list[tuple[str, str]], n_bytes, domains, seed: int = 0):
        self.keys = keys
        self.n_bytes, self.domains = np.asarray(n_bytes), list(domains)
        self.rng = np.random.default_rng(seed)
        n_bytes = np.asarray(n_bytes, dtype=np.float64)
        self.N = len(n_bytes)
        # Text difficulty: 0.4..0.9 nats per byte, so a 1 KB text scores about -650 nats.
        self.difficulty = -n_bytes * self.rng.uniform(0.4, 0.9, self.N)
        self.domain_codes, self.domain_names = _codes(domains)
        self.benchmark_w = self.rng.standard_normal((len(OPEN_LLM_V1), self.N)) / np.sqrt(self.N)
        self._family: dict[str, tuple[float, np.ndarray]] = {}

    def family(self, name: str) -> tuple[float, np.ndarray]:
        if name not in self._family:
            self._family.clear()  # families come in order: keep only the current one
            rng = np.random.default_rng(zlib.crc32(name.encode()))
            self._family[name] = (rng.normal(1.0, 0.08), rng.normal(0.0, 8.0, self.N))
        return self._family[name]

    def row(self, i: int) -> tuple[np.ndarray, float, dict[str, float]]:
        """(loglik (N,), strength, benchmark scores in %) of model `i`."""
        key, family = self.keys[i]
        strength, base = self.family(family)
        rng = np.random.default_rng(i)
        loglik = base.copy()
        if not key.endswith("/base"):
            strength = strength + rng.normal(0.0, 0.01)
            domain = rng.integers(len(self.domain_names))
            loglik += 0.03 * np.abs(self.difficulty) * (self.domain_codes == domain)
            loglik += rng.normal(0.0, 2.0, self.N)
        loglik += (2.0 - strength) * self.difficulty  # stronger: higher log-likelihood
        family_signal = self.benchmark_w @ base  # about N(0, 8) per benchmark
        scores = np.clip(
            50 + 250 * (strength - 1.0) + 1.5 * family_signal + rng.normal(0, 2, 6), 0, 100
        )
        return loglik, float(strength), dict(zip(OPEN_LLM_V1, scores.tolist(), strict=True))


def _codes(values) -> tuple[np.ndarray, list[str]]:
    names = sorted(set(values))
    index = {v: i for i, v in enumerate(names)}
    return np.array([index[v] for v in values]), names


# ------------------------------------------------------------------------------------------
# The platform's side


class ScoreWriter:
    """Writes one model's likelihood and benchmark file and records both materializations, as
    the `likelihood` and `benchmark_scores` assets do; keeps the seconds spent on each."""

    def __init__(self, storage, instance, scorer: SyntheticScorer, corpus_df, corpus_hash):
        self.storage, self.instance, self.scorer = storage, instance, scorer
        self.corpus_hash = corpus_hash
        self.text_ids = corpus_df["text_id"].to_numpy()
        self.n_tokens = np.maximum(1, corpus_df["n_bytes"].to_numpy() // 4)
        self.write_s = self.record_s = 0.0

    def write(self, i: int) -> None:
        t0 = time.perf_counter()
        done = self.write_file(i)
        t1 = time.perf_counter()
        self.record(*done)
        self.write_s += t1 - t0
        self.record_s += time.perf_counter() - t1

    def record(self, key, path, bench_path, meta, n_scores) -> None:
        """The materializations of `likelihood` and `benchmark_scores` for one model."""
        self.instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key="likelihood",
                partition=key,
                metadata={
                    **{k: v for k, v in meta.items() if k != "key"},
                    "mlflow_run_id": "",
                    "n_texts": len(self.text_ids),
                    "path": dg.MetadataValue.path(str(path)),
                },
            )
        )
        self.instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key="benchmark_scores",
                partition=key,
                metadata={
                    "n_published": n_scores,
                    "path": dg.MetadataValue.path(str(bench_path)),
                },
            )
        )

    def write_file(self, i: int):
        """Model `i`'s likelihood and benchmark files; (key, paths, metadata, n scores)."""
        key, family = self.scorer.keys[i]
        loglik, _, bench = self.scorer.row(i)
        meta = {
            "key": key,
            "family": family,
            "revision": synthetic_sha(key),
            "dtype": "bfloat16",
            "device": "synthetic",
            "n_params": 1_000_000,
            "context_length": 2048,
            "tokens_per_s": 0.0,
            "wall_s": 0.0,
            "peak_mem_mb": 0.0,
            "corpus_hash": self.corpus_hash,
            "mean_loglik_nats": float(loglik.mean()),
            "input_tokens": int(self.n_tokens.sum()),
            # A fine-tune's card declares its base (what lineage_report checks).
            "base_models": [] if key.endswith("/base") else [f"{family}/base"],
        }
        frame = likelihood_frame(self.text_ids, loglik, self.n_tokens)
        path = self.storage.write_likelihood(key, frame, meta)
        scores = pl.DataFrame(
            [(key, b, SUITE_OPEN_LLM, s, "file", None) for b, s in bench.items()],
            schema=empty_scores().schema,
            orient="row",
        ).select(SCORE_COLUMNS)
        bench_path = write_parquet(
            scores, self.storage.benchmark_path(key), {"key": key, "n_published": scores.height}
        )
        return key, path, bench_path, meta, scores.height

    def write_all(self, indices, processes: int = 3) -> dict:
        """Every model in `indices`: the files by `processes` worker processes (their fsyncs
        overlap), each materialization recorded here as its files are done."""
        import multiprocessing

        indices = list(indices)
        t0 = time.perf_counter()
        # spawn, not fork: a forked child of a process that ran polars deadlocks in polars.
        context = multiprocessing.get_context("spawn")
        setup = (
            self.storage.base_dir,
            self.instance.root_directory,
            self.scorer.keys,
            self.scorer.n_bytes,
            self.scorer.domains,
            self.text_ids,
            self.n_tokens,
            self.corpus_hash,
        )
        with context.Pool(processes, initializer=_init_worker, initargs=setup) as pool:
            for n, (write_s, record_s) in enumerate(
                pool.imap_unordered(_write_and_record, indices, chunksize=10), 1
            ):
                self.write_s += write_s
                self.record_s += record_s
                if n % 1000 == 0:
                    print(f"  {n} models ({time.perf_counter() - t0:.0f} s; load {load_1m()})")
        return {
            "wall_s": round(time.perf_counter() - t0, 1),
            "write_files_s_all_workers": round(self.write_s, 1),
            "record_materializations_s_all_workers": round(self.record_s, 1),
            "processes": processes,
        }

    def write_all_serial(self, indices) -> dict:
        for n, i in enumerate(indices, 1):
            self.write(i)
            if n % 1000 == 0:
                print(
                    f"  {n} models written ({self.write_s:.0f} s files, "
                    f"{self.record_s:.0f} s events; load {load_1m()})",
                    flush=True,
                )
        return {
            "write_files_s": round(self.write_s, 1),
            "record_materializations_s": round(self.record_s, 1),
        }


_WORKER: ScoreWriter | None = None


def _init_worker(base_dir, home, keys, n_bytes, domains, text_ids, n_tokens, corpus_hash):
    """A worker of `ScoreWriter.write_all`: the same writer, with an instance of its own."""
    from resources.storage import StorageResource

    global _WORKER
    fast_sqlite_commits()
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(home))
    corpus_df = pl.DataFrame({"text_id": text_ids, "n_bytes": n_tokens * 4})
    _WORKER = ScoreWriter(
        StorageResource(base_dir=base_dir),
        instance,
        SyntheticScorer(keys, n_bytes, domains),
        corpus_df,
        corpus_hash,
    )
    _WORKER.n_tokens = n_tokens


def _write_and_record(i: int) -> tuple[float, float]:
    assert _WORKER is not None
    t0 = time.perf_counter()
    done = _WORKER.write_file(i)
    t1 = time.perf_counter()
    _WORKER.record(*done)
    return t1 - t0, time.perf_counter() - t1


def write_corpus_jsonl(path: Path, n_texts: int, seed: int = 42) -> Path:
    """A `texts-10k-pile.jsonl`-shaped file of `n_texts` texts (the embedded corpus has too few
    chunks for N = 10,000): windows of ~260..1,020 bytes of consecutive words from the embedded
    documents, the document's domain as `pile_set_name`. Only each text's length and domain
    matter to the synthetic scorer; the corpus asset reads the file with its `jsonl` source."""
    import gzip

    from modelmap.corpus.build import EMBEDDED_PATH

    with gzip.open(EMBEDDED_PATH, "rt", encoding="utf-8") as fh:
        docs = [json.loads(line) for line in fh if line.strip()]
    docs = [(d["domain"], d["text"].split()) for d in docs if len(d["text"]) > 2000]
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    with path.open("w", encoding="utf-8") as out:
        while len(seen) < n_texts:
            domain, words = docs[rng.integers(len(docs))]
            start = int(rng.integers(max(1, len(words) - 400)))
            target = int(rng.integers(260, 1020))
            text, end = "", start
            while end < len(words) and len((text + " " + words[end]).encode()) <= target:
                text = (text + " " + words[end]).strip()
                end += 1
            if len(text.encode()) < 257 or text in seen:
                continue
            seen.add(text)
            record = {"text": text, "pile_set_name": domain, "pile_idx": len(seen) - 1}
            out.write(json.dumps(record | {"chunk_idx": 0, "index": len(seen) - 1}) + "\n")
    return path


def fast_sqlite_commits() -> None:
    """`PRAGMA synchronous=OFF` on every SQLite connection this process opens: recording K
    materializations costs one fsync'd commit each otherwise (~30-90 ms on this disk), most of
    the set-up time. Only this process (the set-up) is affected; the daemon, the webserver and
    the runs keep SQLite's defaults, so the measured figures are the platform's own."""
    import sqlalchemy
    from sqlalchemy.engine import Engine

    @sqlalchemy.event.listens_for(Engine, "connect")
    def _no_sync(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA synchronous=OFF")
        cursor.close()


def init_mlflow_store(uri: str) -> None:
    """Create the MLflow store's tables now (a deployment's store already exists; a fresh
    SQLite store would charge its schema migration to the first asset that logs a run)."""
    import mlflow

    mlflow.MlflowClient(tracking_uri=uri).search_experiments()


def sensor_tick(instance, hub, cursor: str | None = None) -> tuple[float, dg.SensorResult]:
    """One `hub_models_sensor` tick in this process against the instance; (seconds, result)."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"hub": hub})
    t0 = time.perf_counter()
    result = hub_models_sensor(context)
    return time.perf_counter() - t0, result


class RssSampler:
    """Samples the RSS of every process under `root_pid` every `interval` seconds."""

    def __init__(self, root_pid: int, interval: float = 0.25):
        self.root = psutil.Process(root_pid)
        self.interval = interval
        self.samples: list[tuple[float, int, float]] = []  # (time, pid, rss MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            with contextlib.suppress(psutil.Error):
                for proc in self.root.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        self.samples.append((now, proc.pid, proc.memory_info().rss / 2**20))
            self._stop.wait(self.interval)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, pid: int, start: float, end: float) -> float | None:
        values = [rss for t, p, rss in self.samples if p == pid and start - 0.3 <= t <= end + 0.3]
        return round(max(values), 1) if values else None


def automation_state(instance: dg.DagsterInstance, name: str = "modelmap_automation"):
    for state in instance.all_instigator_state():
        if state.name == name:
            return state
    return None


def automation_ticks(instance: dg.DagsterInstance) -> list:
    state = automation_state(instance)
    if state is None:
        return []
    ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1000)
    return sorted(ticks, key=lambda t: t.timestamp)


def wait_for_refresh(instance, after: float, timeout_s: float) -> dict:
    """Wait until the core assets (`CORE`) have materialized after `after` and no run over all
    models is queued or running; returns {asset: timestamp} of every downstream asset
    materialized after `after` (a failed refresh run raises)."""
    deadline = time.time() + timeout_s
    active = [
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
    ]
    while time.time() < deadline:
        done = {}
        for name in DOWNSTREAM_NAMES:
            records = instance.fetch_materializations(dg.AssetKey(name), limit=1).records
            if records and records[0].timestamp > after:
                done[name] = records[0].timestamp
        runs = [
            r
            for r in instance.get_runs(
                dg.RunsFilter(created_after=datetime.fromtimestamp(after - 60, UTC))
            )
            if r.tags.get("dagster/partition") is None
        ]
        failed = [r for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
        if failed:
            raise RuntimeError(f"refresh run {failed[0].run_id} failed; see the run's events")
        if set(CORE) <= set(done) and not [r for r in runs if r.status in active]:
            return done
        time.sleep(1.0)
    raise TimeoutError(f"refresh not done after {timeout_s:.0f} s")


def step_times(instance, run_ids: list[str]) -> dict[str, tuple[str, float, float]]:
    """Per asset step: (run id, start, end) from the runs' step events."""
    out = {}
    for run_id in run_ids:
        starts, ends = {}, {}
        for record in instance.all_logs(run_id):
            event = record.dagster_event
            if event is None or event.step_key is None:
                continue
            if event.event_type == dg.DagsterEventType.STEP_START:
                starts[event.step_key] = record.timestamp
            elif event.event_type in (
                dg.DagsterEventType.STEP_SUCCESS,
                dg.DagsterEventType.STEP_FAILURE,
            ):
                ends[event.step_key] = record.timestamp
        for step, start in starts.items():
            if step in ends:
                out[step] = (run_id, start, ends[step])
    return out


# ------------------------------------------------------------------------------------------
# The UI


def ui_load_times(url: str, repeats: int, ready: dict[str, tuple[str, object]]) -> dict:
    """Seconds until each page shows its ready text, in a warm headless Chromium: one visit
    first (not counted), then `repeats` visits; {name: [seconds, ...]}."""
    from workshop.browser import open_page

    out: dict[str, list[float]] = {name: [] for name in ready}
    with open_page() as page:
        for visit in range(repeats + 1):
            for name, (path, text) in ready.items():
                t0 = time.perf_counter()
                page.goto(url + path, wait_until="commit")
                page.get_by_text(text, exact=False).first.wait_for(timeout=120_000)
                seconds = time.perf_counter() - t0
                if visit == 0:
                    skip = page.get_by_role("button", name="Skip")
                    if skip.count() and skip.first.is_visible():
                        skip.first.click()
                else:
                    out[name].append(seconds)
        with contextlib.suppress(Exception):
            page.goto(url + ready["ui_partitions_page"][0], wait_until="commit")
            page.wait_for_timeout(3000)
            page.screenshot(path=str(Path(tempfile.gettempdir()) / "bench_scale_partitions.png"))
    return out


# ------------------------------------------------------------------------------------------


def save_rows(out: Path, rows: list[dict], machine: str) -> None:
    """Replace this K and N's rows of `runs` in `out` (other keys and rows untouched)."""
    data = json.loads(out.read_text()) if out.exists() else {}
    data.setdefault("machine", machine)
    replaced = {(r["models"], r["texts"], r.get("estimated", False)) for r in rows}
    kept = [
        r
        for r in data.get("runs", [])
        if (r["models"], r["texts"], r.get("estimated", False)) not in replaced
    ]
    data["runs"] = sorted(
        kept + rows, key=lambda r: (r.get("estimated", False), r["models"], r["texts"])
    )
    out.write_text(json.dumps(data, indent=1) + "\n")


ESTIMATE_METHOD = (
    "power law through the two measured points: each step's wall time and peak RSS at "
    "K = 100,000 is its K = 10,000 value times the growth from K = 1,000 to 10,000 (same "
    "factor per decade of K, exponent clamped to 0..2), same N and variant"
)


def estimate_rows(runs: list[dict], to_k: int = 100_000, lo: int = 1000, hi: int = 10_000):
    """K = `to_k` rows estimated from the measured rows at `lo` and `hi` (see ESTIMATE_METHOD)."""
    import math

    def by_step(k):
        return {
            (r["texts"], r["step"], r.get("variant")): r
            for r in runs
            if r["models"] == k and not r.get("estimated")
        }

    small, large = by_step(lo), by_step(hi)
    decades = math.log10(to_k / hi) / math.log10(hi / lo)
    out = []
    for key, b in sorted(large.items(), key=lambda kv: str(kv[0])):
        a = small.get(key)
        if a is None:
            continue
        row = {"models": to_k, "texts": key[0], "step": key[1], "estimated": True}
        if key[2] is not None:
            row["variant"] = key[2]
        for field in ("wall_s", "peak_rss_mb"):
            if a.get(field) and b.get(field):
                growth = min(max(b[field] / a[field], 1.0), (hi / lo) ** 2)
                row[field] = round(b[field] * growth**decades, 3 if field == "wall_s" else 1)
            else:
                row[field] = None
        row["method"] = ESTIMATE_METHOD
        out.append(row)
    # The refresh runs its steps one after another: never less than their estimated sum
    # (each step grows at its own rate, the whole at a blend of theirs).
    steps = [r for r in out if r["step"] in ("coordinates", "kl_table", "model_map", "reports")]
    for r in out:
        if r["step"] == "full_refresh" and r["wall_s"] is not None:
            r["wall_s"] = max(r["wall_s"], round(sum(s["wall_s"] or 0 for s in steps), 3))
    return out


def markdown_table(data: dict) -> str:
    """The `runs` of scale.json as a Markdown table (one line per step and K)."""
    lines = [
        "| K | N | step | wall s | peak RSS MB | load (1 min) | note |",
        "| ---: | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for r in data.get("runs", []):
        note = [r["variant"]] if r.get("variant") else []
        if r.get("estimated"):
            note.append("estimated")
        for extra in ("nearest_in_family", "placement_s", "visits_s", "median_s", "requested"):
            if extra in r:
                note.append(f"{extra} {r[extra]}")
        rss = f"{r['peak_rss_mb']:,.0f}" if r.get("peak_rss_mb") else ""
        lines.append(
            f"| {r['models']:,} | {r['texts']:,} | {r['step']} | {r['wall_s']:,.1f} | {rss} "
            f"| {r.get('load_1m', '')} | {'; '.join(note)} |"
        )
    return "\n".join(lines)


def machine_description() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        pyplatform.processor(),
    )
    mem = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} cores of {cpu}, {mem:.0f} GiB, shared with other work"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=100, help="K")
    parser.add_argument("--texts", type=int, default=1000, help="N")
    parser.add_argument("--family-size", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "scale.json")
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument("--root", type=Path, help="working folder (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    parser.add_argument("--refresh-timeout", type=float, default=3600)
    parser.add_argument("--ui-repeats", type=int, default=3)
    parser.add_argument("--no-ui", action="store_true")
    parser.add_argument(
        "--estimate",
        action="store_true",
        help="only add the K = 100,000 rows estimated from the measured 1,000 and 10,000 ones",
    )
    parser.add_argument("--table", action="store_true", help="only print --out as Markdown")
    args = parser.parse_args()
    if args.estimate or args.table:
        data = json.loads(args.out.read_text())
        if args.estimate:
            rows = estimate_rows(data["runs"])
            data["runs"] = [r for r in data["runs"] if not r.get("estimated")] + rows
            args.out.write_text(json.dumps(data, indent=1) + "\n")
            print(f"{len(rows)} estimated rows written to {args.out}")
        print(markdown_table(data))
        return 0
    K, N = args.models, args.texts
    root = args.root or Path(tempfile.mkdtemp(prefix=f"modelmap-scale-{K}-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"scale benchmark K={K} N={N} in {root} (load {load_1m()})", flush=True)
    rows: list[dict] = []

    def row(step: str, wall_s: float, peak_rss_mb: float | None = None, **extra) -> None:
        r = {"models": K, "texts": N, "step": step, "wall_s": round(wall_s, 3)}
        r["peak_rss_mb"] = peak_rss_mb
        r.update(extra)
        r.setdefault("load_1m", load_1m())
        rows.append(r)
        print(f"  {step}: {json.dumps({k: v for k, v in r.items() if k != 'step'})}", flush=True)

    home = root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    hub_port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DAGSTER_HOME": str(home),
        "MODELMAP_DATA": str(root / "data"),
        "MODELMAP_CACHE": str(root / "cache"),
        "MODELMAP_LOCAL_MODELS": "",
        "MODELMAP_DEVICE": "cpu",
        "MODELMAP_BENCHMARK_MEASURE": "never",
        # Refresh on every new score (the full refresh measured is the same work as an hourly
        # one; a schedule would make the moment it starts depend on the clock).
        "MODELMAP_MAP_REFRESH": "eager",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "HF_ENDPOINT": f"http://127.0.0.1:{hub_port}",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(root / "hf_home"),
        "MODELMAP_HUB_LOOKBACK_HOURS": str(24 * 365),
    }
    fast_sqlite_commits()
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    init_mlflow_store(env["MLFLOW_TRACKING_URI"])
    resources = build_resources(env)
    storage = resources["storage"]

    t0 = time.perf_counter()
    corpus_file = write_corpus_jsonl(root / "texts.jsonl", N)
    materialize_corpus(
        instance, resources, {"source": "jsonl", "path": str(corpus_file), "n_texts": N}
    )
    corpus_df, corpus_meta = storage.read_corpus()
    print(f"  corpus of {corpus_df.height} texts in {time.perf_counter() - t0:.1f} s")
    if corpus_df.height != N:
        print(f"  note: the corpus has {corpus_df.height} texts, not {N}")

    keys = synthetic_keys(K, args.family_size)
    hub_log = (root / "hub.log").open("w")
    hub_proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workshop.hub_server",
            "--root",
            str(root / "hub"),
            "--port",
            str(hub_port),
            "--quiet",
            "--synthetic-models",
            str(K),
            "--synthetic-family-size",
            str(args.family_size),
        ],
        cwd=REPO,
        env=env,
        stdout=hub_log,
        stderr=subprocess.STDOUT,
    )
    results: dict = {}
    try:
        wait_until_up(f"http://127.0.0.1:{hub_port}/api/models?limit=1")
        hub = build_resources(env)["hub"]
        seconds, result = sensor_tick(instance, hub)
        row(
            "sensor_tick",
            seconds,
            variant="discovery",
            listed=K,
            requested=len(result.run_requests or []),
        )

        t0 = time.perf_counter()
        new = register(instance, [k for k, _ in keys])
        row("register_partitions", time.perf_counter() - t0, added=len(new))

        scorer = SyntheticScorer(keys, corpus_df["n_bytes"].to_numpy(), corpus_df["domain"])
        writer = ScoreWriter(storage, instance, scorer, corpus_df, corpus_meta["corpus_hash"])
        t0 = time.perf_counter()
        results["setup"] = writer.write_all(range(K - 1))
        print(
            f"  {K - 1} models' scores written and recorded in {time.perf_counter() - t0:.0f} s: "
            f"{results['setup']}"
        )
        results.update(run_platform(instance, env, root, row, args, storage, writer, hub))
    finally:
        hub_proc.terminate()
        hub_proc.wait(timeout=30)
        hub_log.close()

    print(json.dumps({"K": K, "N": N, **results}, indent=1))
    if not args.no_save:
        save_rows(args.out, rows, machine_description())
        print(f"wrote {len(rows)} rows to {args.out}")
    if not args.keep and args.root is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def run_platform(instance, env, root, row, args, storage, writer: ScoreWriter, hub) -> dict:
    """Start the daemon and webserver; once automation has ticked, land the last model's
    scores (as the last model of a batch) and time the refresh it triggers, then the UI."""
    results: dict = {}
    keys = [k for k, _ in writer.scorer.keys]
    with local_platform(env, root / "logs") as servers:
        started = time.time()
        runs_parent = servers.procs[CODE_SERVER].pid  # the code server starts every run
        # Automation never requests a missing asset on its first evaluation: wait for one.
        deadline = time.time() + 600
        while not [t for t in automation_ticks(instance) if t.end_timestamp]:
            if time.time() > deadline:
                raise TimeoutError("the automation sensor has not ticked in 600 s")
            time.sleep(1.0)
        print(f"  automation ticking {time.time() - started:.0f} s after the daemon started")
        sampler = RssSampler(runs_parent).start()
        try:
            landed = time.time()
            writer.write(len(keys) - 1)
            done = wait_for_refresh(instance, landed, args.refresh_timeout)
        finally:
            sampler.stop()
        downstream = {dg.AssetKey(n) for n in DOWNSTREAM_NAMES}
        run_ids = [
            r.dagster_run.run_id
            for r in instance.get_run_records(
                dg.RunsFilter(created_after=datetime.fromtimestamp(started - 5, UTC))
            )
            if downstream & set(r.dagster_run.asset_selection or ())
        ]
        steps = step_times(instance, run_ids)
        pids = {rid: (run_worker_pid(instance, rid) or (None,))[0] for rid in run_ids}

        def peak(step: str) -> float | None:
            run_id, start, end = steps[step]
            return sampler.peak(pids[run_id], start, end) if pids.get(run_id) else None

        for name in ("coordinates", "kl_table", "model_map"):
            _, start, end = steps[name]
            extra = {}
            if name == "kl_table":
                extra["nearest_in_family"] = nearest_in_family(storage)
            row(name, end - start, peak(name), **extra)
        report_s = {n: steps[n][2] - steps[n][1] for n in REPORTS if n in steps}
        peaks = [p for p in (peak(n) for n in report_s) if p is not None]
        row(
            "reports",
            sum(report_s.values()),
            max(peaks) if peaks else None,
            **{f"{n}_s": round(s, 3) for n, s in report_s.items()},
        )

        ticks = automation_ticks(instance)
        requesting = next(
            (t for t in ticks if t.timestamp >= landed - 60 and t.tick_data.run_ids), None
        )
        if requesting is None:
            raise RuntimeError("no automation tick requested a run")
        run_peaks = [
            sampler.peak(pid, requesting.timestamp, max(done.values()))
            for pid in pids.values()
            if pid
        ]
        row(
            "full_refresh",
            max(done.values()) - requesting.timestamp,
            max((p for p in run_peaks if p), default=None),
            runs=len(run_ids),
            steps_s={n: round(e - b, 2) for n, (_, b, e) in sorted(steps.items())},
        )
        # A tick with nothing to request, after the refresh (the sensor ticks every 30 s).
        deadline = time.time() + 120
        while time.time() < deadline:
            later = [
                t
                for t in automation_ticks(instance)
                if t.timestamp > max(done.values()) and t.end_timestamp
            ]
            if later:
                break
            time.sleep(2)
        ticks = [
            t for t in automation_ticks(instance) if t.end_timestamp and t.timestamp >= started
        ]
        others = [t.end_timestamp - t.timestamp for t in ticks if t.tick_id != requesting.tick_id]
        row(
            "automation_tick",
            requesting.end_timestamp - requesting.timestamp,
            variant="requesting_refresh",
        )
        if others:
            row(
                "automation_tick",
                max(others),
                variant="longest_other",
                n_ticks=len(others),
                median_s=round(statistics.median(others), 3),
            )
        seconds, result = sensor_tick(instance, hub)
        row(
            "sensor_tick",
            seconds,
            variant="first_tick_all_known",
            listed=len(keys),
            requested=len(result.run_requests or []),
        )
        if not args.no_ui:
            times = ui_load_times(
                servers.url,
                args.ui_repeats,
                {
                    "ui_partitions_page": (
                        "/assets/likelihood?view=partitions",
                        re.compile(rf"Materialized \(({len(keys)}|{len(keys):,})\)"),
                    ),
                    "ui_asset_graph": ("/asset-groups", "leakage_report"),
                },
            )
            for name, seconds in times.items():
                row(
                    name,
                    statistics.median(seconds),
                    variant="warm",
                    visits_s=[round(s, 2) for s in seconds],
                )
        results["runs"] = len(run_ids)
        place_new_model(instance, env, storage, writer, row)
    return results


NEW_MODEL = ("synth-f00000/ft-new", "synth-f00000")


def place_new_model(instance, env, storage, writer: ScoreWriter, row) -> None:
    """A new fine-tune of family 0 lands after the map: its likelihood file is written (as the
    `likelihood` run writes it, which then places the model in the same run), and a fresh
    `modelmap neighbours KEY --json` process places it against the current map. Measured: from
    the file on disk to the neighbours and map position printed, and that process's peak RSS;
    `placement_s` is `place()` alone in this process (what the scoring run adds)."""
    try:
        from modelmap.geometry.neighbours import place
    except ImportError:
        print("  place_new_model: modelmap.geometry.neighbours is not in this checkout: skipped")
        return
    key = NEW_MODEL[0]
    register(instance, [key])
    writer.scorer.keys.append(NEW_MODEL)
    writer.write_file(len(writer.scorer.keys) - 1)  # the scores land (no event: no refresh)
    landed = time.perf_counter()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "modelmap"), "neighbours", key, "--json"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak_mb = 0.0
    with contextlib.suppress(psutil.Error):
        watched = psutil.Process(proc.pid)
        while proc.poll() is None:
            peak_mb = max(peak_mb, watched.memory_info().rss / 2**20)
            time.sleep(0.05)
    out, err = proc.communicate()
    wall = time.perf_counter() - landed
    if proc.returncode != 0:
        raise RuntimeError(f"modelmap neighbours {key} failed: {err.strip()[-2000:]}")
    placed = json.loads(out.strip().splitlines()[-1])
    nearest = placed["neighbours"][0]["neighbour"]
    again = place(storage.root, key)
    row(
        "place_new_model",
        wall,
        round(peak_mb, 1),
        method="fresh `modelmap neighbours KEY --json` process after the file landed",
        placement_s=round(again.seconds, 3),
        nearest=nearest,
        nearest_in_family=nearest.split("/")[0] == NEW_MODEL[1],
        has_map_position=placed.get("map_x") is not None,
        placed_among=placed.get("placed_among"),
    )


def nearest_in_family(storage) -> float:
    """Fraction of models whose nearest neighbour (by 2KL) is in their own family."""
    df = pl.read_parquet(storage.root / "kl_table" / "neighbours.parquet")
    first = df.filter(pl.col("rank") == 1)
    same = (
        first["model"].str.split("/").list.first() == first["neighbour"].str.split("/").list.first()
    )
    return round(float(same.mean()), 4)


if __name__ == "__main__":
    sys.exit(main())
