"""Benchmark: server-side render time of every dashboard page on a big generated store.

    python bench/dashboard.py [--runs 1000] [--predictions 1000000] [--repeats 5] [--store PATH]

Generates a SQLite run store (schema by the real migrations, rows bulk-inserted with sqlite3
``executemany``): pretraining runs with loss curves, experiments whose fine-tuning children carry
arm / fraction / seed, metrics, confusion matrices and ``--predictions`` per-scan predictions in
all, Grad-CAM runs with statistics, embeddings, and audited data sets. Then renders each page with
Streamlit's AppTest (the script run on the server, no browser) ``--repeats`` times: *cold* with
``st.cache_data`` cleared before each run (what the first visitor after a change waits for) and
*warm* (cached query results, what every further click costs). Prints one JSON object with the
medians in seconds; the target is cold <= 2 s per page. The baseline measured in the same run is
one ``SELECT count(*)`` over all predictions: the price of a single full scan of the big table,
which no page may pay per request.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / "dashboard" / "Home.py"
PAGES = {
    "Home": None,
    "Runs": "pages/1_Runs.py",
    "SSL vs Supervised": "pages/2_SSL_vs_Supervised.py",
    "Confusion": "pages/3_Confusion.py",
    "Scan Explorer": "pages/4_Scan_Explorer.py",
    "Embeddings": "pages/5_Embeddings.py",
    "Data": "pages/6_Data.py",
}
TASKS = ("tumor", "alzheimer", "parkinsons", "ms")
ARMS = ("ssl-linear", "ssl-full", "scratch")
FRACTIONS = (0.01, 0.1, 0.5, 1.0)
LABELS = ["a", "b", "c", "d"]
CHUNK = 50_000


def _ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")  # how SQLAlchemy stores DateTime in SQLite


def generate(path: Path, n_runs: int, n_predictions: int, seed: int = 0) -> dict[str, int]:
    """A store at ``path`` with about ``n_runs`` runs and exactly ``n_predictions`` prediction rows."""
    from sslmri_core.store.writer import RunStore

    store = RunStore(f"sqlite:///{path}")  # the real schema, by migration
    store.engine.dispose()
    rng = np.random.default_rng(seed)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    runs, params, metrics, confusion, results = [], [], [], [], []
    next_id = 1

    def add_run(kind: str, task: str | None, parent: int | None, config: dict) -> int:
        nonlocal next_id
        run_id = next_id
        next_id += 1
        start = t0 + timedelta(minutes=run_id)
        runs.append((run_id, kind, "finished", parent, task, _ts(start), _ts(start), _ts(start + timedelta(minutes=5)),
                     json.dumps(config), "0" * 40, "bench", "cpu", f"/nonexistent/run-{run_id}", None, None, None))
        return run_id

    n_pretrain = max(1, n_runs // 100)
    for _ in range(n_pretrain):
        r = add_run("pretrain", None, None, {"model": "resnet50", "image_size": 128, "epochs": 10})
        for step in range(300):
            metrics += [(r, "loss", step, step // 30, float(5 * np.exp(-step / 100) + rng.normal(0, 0.05)), 0),
                        (r, "lr", step, step // 30, 1e-3, 0)]
    children_per_experiment = len(ARMS) * len(FRACTIONS) * 3
    n_experiments = max(1, (n_runs - n_pretrain) // (children_per_experiment + 1))
    finetunes = []
    for e in range(n_experiments):
        task = TASKS[e % len(TASKS)]
        exp = add_run("experiment", task, None, {"task": task})
        for arm in ARMS:
            for fraction in FRACTIONS:
                for s in range(3):
                    init, mode = ("scratch", "full") if arm == "scratch" else ("ssl", arm.split("-")[1])
                    r = add_run("finetune", task, exp, {"task": task, "init": init, "mode": mode,
                                                        "label_fraction": fraction, "seed": s, "model": "resnet50",
                                                        "data": "/nonexistent/data"})
                    finetunes.append(r)
                    params += [(r, "arm", arm), (r, "fraction", str(fraction)), (r, "seed", str(s)),
                               (r, "split_level", "subject"), (r, "ssl_pool_test_overlap", "0"),
                               (r, "classes", json.dumps(LABELS)), (r, "data_root", "/nonexistent/data")]
                    score = float(np.clip(0.5 + 0.1 * np.log10(fraction * 100) + rng.normal(0, 0.03), 0, 1))
                    for epoch in range(10):
                        metrics += [(r, "train_loss", epoch + 1, epoch, 1.5 - 0.1 * epoch, 0),
                                    (r, "val_balanced_accuracy", epoch + 1, epoch, score - 0.05, 0)]
                    for key, value in (("test_balanced_accuracy", score), ("test_accuracy", score + 0.01),
                                       ("test_macro_f1", score - 0.01), ("test_subject_balanced_accuracy", score + 0.03),
                                       ("test_subject_accuracy", score + 0.04), ("test_subject_macro_f1", score + 0.02)):
                        metrics.append((r, key, None, None, value, 0))
                    for split in ("val", "test"):
                        confusion.append((r, split, "slice", json.dumps(LABELS),
                                          json.dumps(rng.integers(0, 30, (4, 4)).tolist())))
        results.append((exp, "summary", json.dumps([{"arm": a, "fraction": f, "metric": "test_balanced_accuracy",
                                                      "mean": 0.6, "ci": [0.5, 0.7], "n": 3}
                                                     for a in ARMS for f in FRACTIONS])))
    cam_parents = finetunes[:5]
    cam_runs = [add_run("gradcam", "tumor", p, {"run": p}) for p in cam_parents]
    while next_id <= n_runs:  # top up with plain fine-tuning runs
        finetunes.append(add_run("finetune", "tumor", None, {"task": "tumor", "init": "scratch", "mode": "full",
                                                              "label_fraction": 1.0, "seed": 0, "model": "resnet50"}))

    with sqlite3.connect(path) as conn:
        conn.executemany("INSERT INTO runs (id, kind, status, parent_run_id, task, created_at, started_at, ended_at, "
                         "config, git_sha, host, device, out_dir, checkpoint_path, error, heartbeat_at) "
                         "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", runs)
        conn.executemany("INSERT INTO params (run_id, key, value) VALUES (?,?,?)", params)
        conn.executemany("INSERT INTO metrics (run_id, key, step, epoch, value, is_nan) VALUES (?,?,?,?,?,?)", metrics)
        conn.executemany("INSERT INTO confusion (run_id, split, level, labels, matrix) VALUES (?,?,?,?,?)", confusion)
        conn.executemany("INSERT INTO results (run_id, name, payload) VALUES (?,?,?)", results)
        per_run = -(-n_predictions // len(finetunes))
        written = 0
        batch: list[tuple] = []
        for r in finetunes:
            k = min(per_run, n_predictions - written)
            if k <= 0:
                break
            probs = rng.dirichlet(np.ones(4), k)
            pred = probs.argmax(1)
            true = rng.integers(0, 4, k)
            for i in range(k):
                batch.append((r, "test" if i % 2 else "val", f"/nonexistent/data/{LABELS[true[i]]}/s{i // 6}_{i % 6}.png",
                              f"s{i // 6}", LABELS[true[i]], LABELS[pred[i]], float(probs[i, pred[i]]),
                              json.dumps([round(float(p), 4) for p in probs[i]])))
            written += k
            if len(batch) >= CHUNK:
                conn.executemany("INSERT INTO predictions (run_id, split, scan, subject, true_label, pred_label, "
                                 "confidence, probs) VALUES (?,?,?,?,?,?,?,?)", batch)
                batch = []
        if batch:
            conn.executemany("INSERT INTO predictions (run_id, split, scan, subject, true_label, pred_label, "
                             "confidence, probs) VALUES (?,?,?,?,?,?,?,?)", batch)
        cams = [(c, p, None, "gradcam", "test", f"/nonexistent/data/a/s{i // 6}_{i % 6}.png", f"s{i // 6}", "a", "a", "a",
                 0.7, 0.2, 10.0, 0.5, 0.9, 3.0, 0.4, None, None, None, None, None, f"cams/{i}.png")
                for c, p in zip(cam_runs, cam_parents, strict=True) for i in range(500)]
        conn.executemany("INSERT INTO cam_stats (run_id, model_run_id, checkpoint, method, split, scan, subject, "
                         "true_label, target_label, pred_label, confidence, intensity, area_pct, threshold, in_brain, "
                         "raw_max, raw_mean, deletion_drop, random_drop, road, pointing_hit, lesion_energy, heatmap_path) "
                         "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", cams)
        xy = rng.normal(size=(5 * 2000, 2))
        conn.executemany("INSERT INTO embeddings (run_id, method, scan, subject, label, split, source, x, y) "
                         "VALUES (?,?,?,?,?,?,?,?,?)",
                         [(finetunes[j // 2000], "umap", f"/x/{j}.png", f"s{j % 300}", LABELS[j % 4], "test",
                           LABELS[j % 4], float(xy[j, 0]), float(xy[j, 1])) for j in range(len(xy))])
        for d in range(3):
            cur = conn.execute("INSERT INTO datasets (fingerprint, root, created_at, n_files, n_usable, n_images, classes, "
                               "subject_pattern, split_level, summary) VALUES (?,?,?,?,?,?,?,?,?,?)",
                               (f"{d:064d}", f"/nonexistent/data{d}", _ts(t0), 5000, 4990, 4990,
                                json.dumps({lab: 1247 for lab in LABELS}), None, "subject",
                                json.dumps({"files": 5000, "usable": 4990, "images": 4990, "unusable": []})))
            ds = cur.lastrowid
            conn.executemany("INSERT INTO manifest_rows (dataset_id, key, path, rel_path, label, folder_label, status, "
                             "reason) VALUES (?,?,?,?,?,?,?,?)",
                             [(ds, f"/d/{i}.png", f"/d/{i}.png", f"{i}.png", "a", "a", "ok" if i >= 10 else "unusable",
                               None if i >= 10 else "truncated") for i in range(5000)])
            audit = {"duplicate_groups": 3, "cross_split_duplicates": 1, "subject_leaks": 0,
                     "confound": {"flag": False, "reason": "no metadata confound"}}
            conn.execute("INSERT INTO audits (dataset_id, created_at, summary, details) VALUES (?,?,?,?)",
                         (ds, _ts(t0), json.dumps(audit), json.dumps({**audit, "details": {"duplicate_groups": []}})))
        conn.execute("ANALYZE")
    return {"runs": next_id - 1, "predictions": n_predictions, "metrics": len(metrics), "finetune_runs": len(finetunes)}


def render_times(url: str, repeats: int) -> dict[str, dict[str, float]]:
    """Median cold and warm seconds of one AppTest run per page."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["SSLMRI_DB"] = url
    out: dict[str, dict[str, float]] = {}
    for name, page in PAGES.items():
        cold, warm = [], []
        for i in range(repeats + 1):
            at = AppTest.from_file(str(HOME), default_timeout=120)
            if page:
                at.switch_page(page)
            st.cache_data.clear()
            start = time.perf_counter()
            at.run()
            elapsed = time.perf_counter() - start
            if at.exception:
                raise RuntimeError(f"{name}: {at.exception[0].value}")
            if i:  # the first run imports modules: not what a user of a running server waits for
                cold.append(elapsed)
            start = time.perf_counter()
            at.run()
            if i:
                warm.append(time.perf_counter() - start)
        out[name] = {"cold_s": round(statistics.median(cold), 3), "warm_s": round(statistics.median(warm), 3)}
    return out


def baseline_full_scan(path: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            start = time.perf_counter()
            conn.execute("SELECT count(*), avg(confidence) FROM predictions").fetchone()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--predictions", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--store", type=Path, default=None, help="Keep the generated store here (default: a temp dir).")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        path = args.store or Path(tmp) / "bench.db"
        if path.exists():
            path.unlink()
        start = time.perf_counter()
        counts = generate(path, args.runs, args.predictions)
        generate_s = time.perf_counter() - start
        pages = render_times(f"sqlite:///{path}", args.repeats)
        baseline = baseline_full_scan(path, args.repeats)
        size_mb = path.stat().st_size / 2**20
    worst = max(p["cold_s"] for p in pages.values())
    print(json.dumps({
        "benchmark": "dashboard page render (AppTest, server side)", "store": counts, "store_mb": round(size_mb, 1),
        "generate_s": round(generate_s, 1), "repeats": args.repeats, "pages": pages,
        "baseline_full_predictions_scan_s": round(baseline, 3),
        "worst_cold_s": worst, "worst_cold_vs_full_scan": round(worst / baseline, 2) if baseline else None,
        "target_s": 2.0, "meets_target": worst <= 2.0,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }))


if __name__ == "__main__":
    main()
