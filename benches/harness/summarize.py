#!/usr/bin/env python3
"""Per-phase figures of one harness run directory (raw.csv, summary.json, verify.json).

usage: summarize.py RUN_DIR [--md]

Per phase: offered (enqueue) and completion rate (mean of the 5 s samples, summed over
replicas; for jobcast the completion rate is cluster-wide in every replica: max), claim p99 (median and max of the adapter's 30 s-window p99 samples; max over
replicas), queue depth at the end, dead tuples of the declared tables at the end (sum) and
their peak, and the declared tables' total size (heap + indexes + toast) at the end.
Recovery time: seconds from the start of the phase after the stress phase until the first
sample whose claim p99 is <= 1.5x the clean phase's median p99, whose queue depth is
<= max(2x the clean phase's largest depth, 200) and whose completion rate is >= half the offered (the 30 s p99 window makes this >= ~5 s
late).
"""
from __future__ import annotations

import csv
import json
import os
import statistics
import sys
from collections import defaultdict

run_dir = sys.argv[1]
md = "--md" in sys.argv

adapter = defaultdict(lambda: defaultdict(dict))  # phase -> metric -> (t) -> [values per inst]
tables = defaultdict(lambda: defaultdict(list))    # phase -> (metric, subject) -> [(t, v)]
order: list[str] = []
system = ""
for r in csv.DictReader(open(os.path.join(run_dir, "raw.csv"))):
    ph = r["phase_label"]
    system = r["system"]
    if ph not in order:
        order.append(ph)
    t = float(r["elapsed_s"])
    v = float(r["value"]) if r["value"] not in ("", None) else None
    if v is None:
        continue
    if r["subject_kind"] == "adapter":
        adapter[ph][r["metric"]].setdefault(r["sampled_at"][:19], []).append((t, v))
    elif r["subject_kind"] in ("table", "index"):
        tables[ph][(r["metric"], r["subject"])].append((t, v))


def series(ph, metric, agg):
    out = []
    for ts, vals in sorted(adapter[ph][metric].items()):
        out.append((min(t for t, _ in vals), agg(v for _, v in vals)))
    return out


def last_sum(ph, metric):
    total, any_ = 0.0, False
    for (m, _subj), pts in tables[ph].items():
        if m == metric and pts:
            total += sorted(pts)[-1][1]
            any_ = True
    return total if any_ else None


def peak_sum(ph, metric):
    by_t = defaultdict(float)
    for (m, _subj), pts in tables[ph].items():
        if m == metric:
            for t, v in pts:
                by_t[round(t)] += v
    return max(by_t.values()) if by_t else None


# jobcast's adapter reads completions from the shared event log: every replica reports the
# cluster-wide completion rate, so replicas are not summed (max); the peers' adapters count
# their own handler runs (summed).
COMPLETION_AGG = max if system == "jobcast" else sum

rows = []
for ph in order:
    comp = [v for _, v in series(ph, "completion_rate", COMPLETION_AGG)]
    enq = [v for _, v in series(ph, "enqueue_rate", sum)]
    p99 = [v for _, v in series(ph, "claim_p99_ms", max)]
    depth = [v for _, v in series(ph, "queue_depth", max)]
    rows.append({
        "phase": ph,
        "enqueue_rate": statistics.mean(enq) if enq else None,
        "completion_rate": statistics.mean(comp) if comp else None,
        "claim_p99_median_ms": statistics.median(p99) if p99 else None,
        "claim_p99_max_ms": max(p99) if p99 else None,
        "depth_end": depth[-1] if depth else None,
        "dead_tup_end": last_sum(ph, "n_dead_tup"),
        "dead_tup_peak": peak_sum(ph, "n_dead_tup"),
        "size_mb_end": last_sum(ph, "total_relation_size_mb"),
        "live_tup_end": last_sum(ph, "n_live_tup"),
    })

# Recovery time after the stress phase (the phase after the first non-clean, non-warmup one).
clean = next((r for r in rows if r["phase"] in ("clean_1", "baseline")), None)
recovery_s = None
stress_idx = next((i for i, r in enumerate(rows) if r["phase"] not in ("warmup", "clean_1", "baseline")), None)
if clean and stress_idx is not None:
    clean_depths = [v for _, v in series(clean["phase"], "queue_depth", max)] or [0]
    depth_ok = max(2 * max(clean_depths), 200)
    p99_ok = 1.5 * (clean["claim_p99_median_ms"] or 0)
    rec_phase = order[-1]
    p99s = dict(series(rec_phase, "claim_p99_ms", max))
    depths = dict(series(rec_phase, "queue_depth", max))
    comps = dict(series(rec_phase, "completion_rate", COMPLETION_AGG))
    enqs = dict(series(rec_phase, "enqueue_rate", sum))
    start = min(p99s) if p99s else None
    # phase start ~ first sample minus one period; a sample with (almost) no completions
    # has an empty latency window (p99 0): not recovered.
    for t in sorted(p99s):
        if (0 < p99s[t] <= p99_ok and depths.get(t, 0) <= depth_ok
                and comps.get(t, 0) >= 0.5 * enqs.get(t, 0)):
            recovery_s = round(t - start + 5, 1)
            break

summary = {}
try:
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
except Exception:
    pass
chaos = {}
for ph, d in (summary.get("systems", {}).get(system, {}).get("phases", {}) or {}).items():
    m = d.get("metrics", {})
    for k in ("jobs_lost", "chaos_recovery_time_s"):
        if k in m or k in d:
            chaos[f"{ph}.{k}"] = m.get(k, d.get(k))
verify = None
try:
    verify = json.load(open(os.path.join(run_dir, "verify.json")))
except Exception:
    pass

if not md:
    print(json.dumps({"system": system, "phases": rows, "recovery_s": recovery_s,
                      "harness_chaos": chaos, "verify": verify}, indent=1))
else:
    f = lambda v, n=0: "–" if v is None else f"{v:,.{n}f}"  # noqa: E731
    print(f"{system}: recovery {recovery_s} s; harness chaos {chaos}")
    print("| phase | offered/s | done/s | claim p99 median / max (ms) | depth end | dead tuples end / peak | size MB end |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['phase']} | {f(r['enqueue_rate'])} | {f(r['completion_rate'])} | "
              f"{f(r['claim_p99_median_ms'])} / {f(r['claim_p99_max_ms'])} | {f(r['depth_end'])} | "
              f"{f(r['dead_tup_end'])} / {f(r['dead_tup_peak'])} | {f(r['size_mb_end'], 1)} |")
    if verify:
        print("verify:", json.dumps(verify))
