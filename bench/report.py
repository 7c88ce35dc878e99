#!/usr/bin/env python3
"""Render bench/run.sh results (JSONL from the shared lib/bench_one.sh) into bench/results.md.

usage: report.py RESULTS.jsonl VERSIONS.txt OUT.md

Per (server, config): the table shows the run with the median keep-alive rps
(lower median for an even number of runs) and the range over all runs.
The targets use, for each side, the median of that metric over the runs, and
show the range of the per-run ratios (run i of ferrocorn vs run i of the
other server: run.sh interleaves them, so run i of each was measured under
the same machine conditions).
"""
import json
import os
import statistics
import sys

ORDER = [
    ("ferrocorn", "w1 sync"),
    ("gunicorn-sync", "w1"),
    ("granian-wsgi", "w1 blocking-threads=1"),
    ("bjoern", "1 proc"),
    ("ferrocorn", "w2 sync"),
    ("flask@ferrocorn", "w1 sync"),
    ("flask@gunicorn-sync", "w1"),
    ("flask@granian-wsgi", "w1 blocking-threads=1"),
]
FERRO = ("ferrocorn", "w1 sync")
GUNI = ("gunicorn-sync", "w1")
GRAN = ("granian-wsgi", "w1 blocking-threads=1")
BJOERN = ("bjoern", "1 proc")
# SET=kinds
GTHREAD = ("ferrocorn", "w1 gthread threads=4")
GEVENT = ("ferrocorn", "w1 gevent")
GUNI_GEVENT = ("gunicorn-gevent", "w1")
FLASK_GTHREAD = ("flask@ferrocorn", "w1 gthread threads=4")
FLASK_GUNI_GTHREAD = ("flask@gunicorn-gthread", "w1 threads=4")
# SET=asgi
ASGI = ("ferrocorn", "w1 asgi")
GRAN_ASGI = ("granian-asgi", "w1")
UVICORN = ("uvicorn", "w1 httptools uvloop")
FASTAPI = ("fastapi@ferrocorn", "w1 asgi")
FASTAPI_GRAN = ("fastapi@granian-asgi", "w1")


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def wrk(rec, run, key):
    r = rec.get(run)
    return r.get(key) if isinstance(r, dict) else None


def us_per_req(rec, run):
    """Server CPU time per request in µs: cpu% / 100 / rps * 1e6."""
    cpu, rps = rec.get(f"{run}_server_cpu_pct"), wrk(rec, run, "rps")
    if cpu is None or not rps:
        return None
    return cpu / 100.0 / rps * 1e6


def errors(rec, run):
    r = rec.get(run)
    if not isinstance(r, dict):
        return None
    return sum(r.get(k, 0) for k in ("err_connect", "err_read", "err_write", "err_timeout", "err_status"))


def err_text(rec):
    parts = []
    for run in ("ka", "close"):
        r = rec.get(run)
        if not isinstance(r, dict):
            parts.append("–")
            continue
        sub = [f"{short} {r[k]:,}" for k, short in (("err_connect", "conn"), ("err_read", "read"),
               ("err_write", "write"), ("err_timeout", "timeout"), ("err_status", "non2xx")) if r.get(k)]
        parts.append(" ".join(sub) or "0")
    return "0" if parts == ["0", "0"] else " / ".join(parts)


METRICS = {
    "ka_rps": lambda r: wrk(r, "ka", "rps"),
    "close_rps": lambda r: wrk(r, "close", "rps"),
    "ka_p99": lambda r: wrk(r, "ka", "lat_p99_ms"),
    "close_p99": lambda r: wrk(r, "close", "lat_p99_ms"),
    "ka_cpu": lambda r: r.get("ka_server_cpu_pct"),
    "close_cpu": lambda r: r.get("close_server_cpu_pct"),
    "ka_us": lambda r: us_per_req(r, "ka"),
    "close_us": lambda r: us_per_req(r, "close"),
    "pss": lambda r: r.get("ka_server_pss_mib"),
}


def fnum(v, nd=0):
    if v is None:
        return "–"
    return f"{v:,.{nd}f}"


def frange(vals, nd=0):
    vals = [v for v in vals if v is not None]
    if len(vals) < 2:
        return ""
    return f"{min(vals):,.{nd}f}–{max(vals):,.{nd}f}"


class Group:
    def __init__(self, key):
        self.key = key
        self.all = []

    @property
    def ok(self):
        return [r for r in self.all if r.get("status") == "ok" and wrk(r, "ka", "rps") is not None]

    def median_run(self):
        ok = sorted(self.ok, key=lambda r: wrk(r, "ka", "rps"))
        return ok[(len(ok) - 1) // 2] if ok else None

    def values(self, metric):
        return [METRICS[metric](r) for r in self.ok if METRICS[metric](r) is not None]

    def median(self, metric):
        v = self.values(metric)
        return statistics.median(v) if v else None

    def by_run(self, metric):
        return {r.get("run"): METRICS[metric](r) for r in self.ok if METRICS[metric](r) is not None}


def group(recs):
    groups = {}
    for r in recs:
        key = (r.get("name"), r.get("config"))
        groups.setdefault(key, Group(key)).all.append(r)
    known = [groups[k] for k in ORDER if k in groups]
    return known + [g for k, g in groups.items() if k not in ORDER]


def target(groups, label, num_key, num_metric, den_key, den_metric, op, bound, note=""):
    g = {x.key: x for x in groups}
    a, b = g.get(num_key), g.get(den_key)
    if not a or not b or a.median(num_metric) is None or not b.median(den_metric):
        return f"| {label} | – | – | – | n/a (missing runs) |"
    ratio = a.median(num_metric) / b.median(den_metric)
    ra, rb = a.by_run(num_metric), b.by_run(den_metric)
    flag = {r.get("run") for g_ in (a, b) for r in g_.ok if r.get("disturbed")}
    runs = sorted(set(ra) & set(rb), key=lambda x: (x is None, x))
    per_run = [ra[k] / rb[k] for k in runs if rb[k]]
    ok = ratio >= bound if op == ">=" else ratio <= bound
    runs_ok = sum(1 for x in per_run if (x >= bound if op == ">=" else x <= bound))
    rng = ", ".join(f"{ra[k] / rb[k]:.2f}" + ("(!)" if k in flag else "") for k in runs if rb[k]) or "–"
    verdict = "**PASS**" if ok else "**FAIL**"
    shown = f"{ratio:.2f}"
    if float(shown) == bound:          # e.g. 1.002 vs <= 1: show the digit that decides
        shown = f"{ratio:.3f}"
    return (f"| {label} | {shown} (need {op} {bound:g}) | {rng} | {runs_ok}/{len(per_run)} | {verdict}"
            f"{note} |"), ok, ratio, rng


def main():
    res_path, ver_path, out_path = sys.argv[1:4]
    which = sys.argv[4] if len(sys.argv) > 4 else "core"
    kinds = which == "kinds"
    asgi = which == "asgi"
    recs = load(res_path)
    groups = group(recs)
    versions = open(ver_path).read().rstrip() if os.path.exists(ver_path) else "(no versions file)"
    first = next((r for r in recs if r.get("wrk")), {})
    L = []
    L.append("# ferrocorn benchmark: the worker kinds, hello world" if kinds else
             "# ferrocorn benchmark: the asgi kind, hello world (plain ASGI and FastAPI)" if asgi else
             "# ferrocorn benchmark: hello world vs gunicorn, granian, bjoern")
    L.append("")
    L.append("Generated by `bench/run.sh` → `bench/report.py` (raw records: `bench/" + os.path.relpath(res_path, os.path.dirname(os.path.abspath(out_path))) + "`, "
             "server and wrk logs: `bench/results/logs/runN/`). Measurement: the shared "
             "`/work/shared/bench-anchors/lib/bench_one.sh`, app " + ("`apps/hello_asgi.py` and `bench/apps/hello_fastapi.py`" if asgi else "`apps/hello_wsgi.py`") + " (200 `Hello, World!`, "
             f"text/plain, Content-Length). Load: `{first.get('wrk', 'wrk')}` after a 2 s warm-up, once with "
             "keep-alive and once with `-H 'Connection: close'`. wrk runs on the same 2-core machine and "
             "uses up to one core; see `bench/README.md` for the caveats.")
    L.append("")
    L.append("```")
    L.append(versions)
    L.append("```")
    L.append("")

    # ---- targets
    rows = [
        target(groups, "gthread (--threads 4) keep-alive rps ≥ 0.8× ferrocorn sync", GTHREAD, "ka_rps", FERRO, "ka_rps", ">=", 0.8),
        target(groups, "gevent keep-alive rps ≥ 2× gunicorn gevent", GEVENT, "ka_rps", GUNI_GEVENT, "ka_rps", ">=", 2),
        target(groups, "gevent keep-alive rps ≥ 1× granian WSGI", GEVENT, "ka_rps", GRAN, "ka_rps", ">=", 1),
        target(groups, "Flask under gthread keep-alive rps ≥ 2× gunicorn gthread", FLASK_GTHREAD, "ka_rps", FLASK_GUNI_GTHREAD, "ka_rps", ">=", 2),
    ] if kinds else [
        target(groups, "asgi keep-alive rps ≥ 1.5× granian --interface asgi", ASGI, "ka_rps", GRAN_ASGI, "ka_rps", ">=", 1.5),
        target(groups, "asgi keep-alive rps ≥ 2× uvicorn (httptools, uvloop)", ASGI, "ka_rps", UVICORN, "ka_rps", ">=", 2),
        target(groups, "FastAPI hello keep-alive rps ≥ 1.2× granian", FASTAPI, "ka_rps", FASTAPI_GRAN, "ka_rps", ">=", 1.2),
    ] if asgi else [
        target(groups, "ferrocorn keep-alive rps ≥ 10× gunicorn sync", FERRO, "ka_rps", GUNI, "ka_rps", ">=", 10),
        target(groups, "ferrocorn keep-alive rps ≥ 1.5× granian", FERRO, "ka_rps", GRAN, "ka_rps", ">=", 1.5),
        target(groups, "ferrocorn close rps ≥ 1× granian", FERRO, "close_rps", GRAN, "close_rps", ">=", 1.0),
        target(groups, "ferrocorn CPU µs/request ≤ bjoern (keep-alive)", FERRO, "ka_us", BJOERN, "ka_us", "<=", 1.0),
    ]
    L.append("## Targets")
    L.append("")
    L.append("Ratio = median of the first server named over the runs ÷ median of the other server over the runs. "
             "Per-run = the same ratio within each interleaved run (run i vs run i), in run order; (!) = one of "
             "the two was measured while other processes used the CPU (see Machine quietness). "
             "PASS/FAIL is decided on the median ratio; the runs column says in how many runs the ratio alone "
             "would also pass.")
    L.append("")
    L.append("| target | ratio (medians) | per-run ratios | runs passing | result |")
    L.append("|---|---:|---:|---:|---|")
    for t in rows:
        L.append(t[0] if isinstance(t, tuple) else t)
    L.append("")
    L.append("CPU µs/request = server CPU % / 100 / rps × 10⁶ in the keep-alive run. It is a fair efficiency "
             "figure when both servers sit near 100 % of a core (see the CPU % column): on this 2-core box wrk "
             "takes the other core, so above ~100k rps the client paces both servers.")
    L.append("")

    # ---- main table
    L.append("## Results (median run per config)")
    L.append("")
    L.append("Row = the run with the median keep-alive rps; `range` = min–max over all runs. "
             "KA = a second curl request reused the connection. CPU % = CPU time of the server's whole process "
             "group / wall time (100 % = one core). CPU µs/req = CPU % / 100 / rps × 10⁶. "
             "PSS = proportional set size of the group after the keep-alive run. "
             "Errors = wrk errors keep-alive / close.")
    L.append("")
    L.append("| server | config | KA | rps keep-alive | p99 ms KA | rps close | p99 ms close | CPU % KA | "
             "CPU µs/req KA | CPU % close | CPU µs/req close | PSS MiB | errors | runs | range rps KA | range rps close "
             "| range µs/req KA |")
    L.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    failed = []
    warnings = []
    for g in groups:
        for r in g.all:
            if str(r.get("status", "")).startswith("disturbed"):
                continue          # re-measured; shown in the quietness section
            if r.get("status") != "ok":
                failed.append(r)
            elif r.get("disturbed"):
                warnings.append(f"{g.key[0]} ({g.key[1]}) run {r.get('run')}: other processes used "
                                f"{r.get('foreign_cpu_pct'):.0f} % of a core during the measurement (after all retries)")
            elif r.get("alive_after_load") == "no":
                warnings.append(f"{g.key[0]} ({g.key[1]}) run {r.get('run')}: server was not alive after the load")
            if r.get("server_log_tracebacks"):
                warnings.append(f"{g.key[0]} ({g.key[1]}) run {r.get('run')}: {r['server_log_tracebacks']} "
                                "Traceback(s) in the server log")
            for run in ("ka", "close"):
                if errors(r, run):
                    warnings.append(f"{g.key[0]} ({g.key[1]}) run {r.get('run')}: wrk errors in the {run} run "
                                    f"({err_text(r)})")
        m = g.median_run()
        if not m:
            continue
        L.append("| {n} | {c} | {ka} | {rka} | {pka} | {rcl} | {pcl} | {cka} | {uka} | {ccl} | {ucl} | {pss} | {err} "
                 "| {runs} | {r1} | {r2} | {r3} |".format(
                     n=g.key[0], c=g.key[1], ka=m.get("keepalive_supported", "?"),
                     rka=fnum(METRICS["ka_rps"](m)), pka=fnum(METRICS["ka_p99"](m), 2),
                     rcl=fnum(METRICS["close_rps"](m)), pcl=fnum(METRICS["close_p99"](m), 2),
                     cka=fnum(METRICS["ka_cpu"](m)), uka=fnum(METRICS["ka_us"](m), 1),
                     ccl=fnum(METRICS["close_cpu"](m)), ucl=fnum(METRICS["close_us"](m), 1),
                     pss=fnum(METRICS["pss"](m), 1), err=err_text(m), runs=len(g.ok),
                     r1=frange(g.values("ka_rps")), r2=frange(g.values("close_rps")),
                     r3=frange(g.values("ka_us"), 1)))
    L.append("")

    # ---- Flask
    gd = {x.key: x for x in groups}
    fl = [gd.get(k) for k in (("flask@ferrocorn", "w1 sync"), ("flask@gunicorn-sync", "w1"),
                              ("flask@granian-wsgi", "w1 blocking-threads=1"))]
    if fl[0] and fl[0].ok and any(x and x.ok for x in fl[1:]):
        L.append("## Flask hello (framework overhead included)")
        L.append("")
        L.append("| flask@ferrocorn vs | rps KA ratio (medians) | rps close ratio (medians) |")
        L.append("|---|---:|---:|")
        for other in fl[1:]:
            if other and other.ok:
                L.append("| {n} | {a:.2f} | {b:.2f} |".format(
                    n=other.key[0].split("@", 1)[1],
                    a=fl[0].median("ka_rps") / other.median("ka_rps"),
                    b=fl[0].median("close_rps") / other.median("close_rps")))
        L.append("")

    # ---- noise / machine state
    kept = [r for r in recs if r.get("foreign_cpu_pct") is not None and r.get("status") == "ok"]
    redone = [r for r in recs if str(r.get("status", "")).startswith("disturbed")]
    if kept:
        L.append("## Machine quietness")
        L.append("")
        L.append("The box is shared: CPU used by processes this script did not start steals from the two cores "
                 "the server and wrk need. For every config, run.sh computes `other CPU` = the machine's busy "
                 "time while the config ran minus the CPU time (rusage) of bench_one, wrk and the server, in % of "
                 "one core (a quiet box gives 0–5 %). An attempt above MAX_FOREIGN_PCT is discarded and measured "
                 f"again (up to RETRIES times). Discarded attempts in this report: {len(redone)}.")
        L.append("")
        L.append("| server | config | other CPU % per kept run | machine CPU % per kept run | server CPU % KA per kept run "
                 "| discarded attempts |")
        L.append("|---|---|---|---|---|---:|")
        for g in groups:
            runs = sorted((r for r in g.all if r.get("status") == "ok"), key=lambda r: r.get("run") or 0)
            L.append("| {n} | {c} | {f} | {m} | {s} | {d} |".format(
                n=g.key[0], c=g.key[1],
                f=", ".join(fnum(r.get("foreign_cpu_pct")) + ("(!)" if r.get("disturbed") else "") for r in runs),
                m=", ".join(fnum(r.get("machine_cpu_during_pct")) for r in runs),
                s=", ".join(fnum(r.get("ka_server_cpu_pct")) for r in runs),
                d=sum(1 for r in g.all if str(r.get("status", "")).startswith("disturbed"))))
        L.append("")
        L.append("(!) = still disturbed after the last retry; kept, but read that run with care.")
        L.append("")

    if failed or warnings:
        L.append("## Failures and warnings")
        L.append("")
        for r in failed:
            L.append(f"- {r.get('name')} ({r.get('config')}) run {r.get('run')}: status `{r.get('status')}`")
        for w in warnings:
            L.append(f"- {w}")
        L.append("")

    notes = os.path.splitext(out_path)[0] + ".notes.md"
    if os.path.exists(notes):
        L.append(open(notes).read().rstrip())
        L.append("")
    text = "\n".join(L)
    with open(out_path, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
