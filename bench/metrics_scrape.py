#!/usr/bin/env python3
"""Scrape timing for bench/metrics.sh (stdlib only).

  metrics_scrape.py scrape URL [N]
      N timed GETs of URL over one persistent HTTP/1.1 connection (http.client reconnects
      by itself if the server closes); prints one JSON object.

  metrics_scrape.py irs --name NAME --app-url URL --workdir DIR [--n1 2000 --n2 12000] --out FILE.jsonl
        -- valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file={OUTDIR}/cg.%p SERVER...
      Instructions per request in the worker, free of timing noise: runs the server under
      cachegrind twice (n1 and n2 keep-alive requests on one connection) and prints the
      worker's (Ir(n2) - Ir(n1)) / (n2 - n1).

  metrics_scrape.py churn --name NAME --config TEXT --app-url URL --metrics-url URL
        --mp-dir DIR --workers 8 --checkpoints 10,1000 --scrapes 200 --out FILE.jsonl
        --log FILE -- COMMAND...
      Starts COMMAND (a pre-fork server running bench/metrics_apps/metrics_series_app.py
      with --max-requests 1) in its own session, waits until all workers have booted
      (bench_app_worker_boots_total == workers in the scrape), then for each checkpoint C
      sends GET / (one new connection each) until C requests were served, i.e. C worker
      restarts; waits until the replacements have booted (boots == workers + C), lets it
      settle, counts the files in the multiprocess dir and times N scrapes.  Appends one
      JSON record to --out.  The server is stopped by its own PID (SIGTERM, then SIGKILL of
      any PID left in its process group after a grace period); nothing else is touched.

  metrics_scrape.py pair --name NAME --ports-a APP,METRICS --ports-b APP,METRICS --mp-dir DIR
        --workers 8 --low 10 --high 1000 --scrapes 400 --out FILE.jsonl --log FILE -- COMMAND...
      The same question as churn's two checkpoints, without the minutes between them: two
      copies of COMMAND ({APP_PORT}, {METRICS_PORT} and {MP_DIR} substituted; dirs DIR-A, DIR-B)
      run at once.  Both are driven to --low restarts and scraped in turn (A B, B A, ... N rounds);
      then B alone goes on to --high restarts and both are scraped in turn again.  Records wall
      medians and the exporters' CPU ms per scrape; B after/before divided by A after/before
      (A did not change) removes the machine's drift between the two phases.
"""
import argparse
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse

BOOTS_RE = re.compile(r"^bench_app_worker_boots_total(?:\{[^}]*\})? (\S+)", re.M)
S001_RE = re.compile(r'^bench_app_series_total\{[^}]*series="s001"[^}]*\} (\S+)', re.M)


def _conn(url, timeout):
    u = urllib.parse.urlsplit(url)
    path = (u.path or "/") + (("?" + u.query) if u.query else "")
    return http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout), path


def get_once(url, timeout=5.0, close=True):
    conn, path = _conn(url, timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"} if close else {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def parse_body(body):
    text = body.decode("utf-8", "replace")
    lines = [l for l in text.splitlines() if l and not l.startswith("#")]
    boots = sum(float(m) for m in BOOTS_RE.findall(text)) if BOOTS_RE.search(text) else None
    s001 = sum(float(m) for m in S001_RE.findall(text)) if S001_RE.search(text) else None
    app_series = sum(1 for l in lines if l.startswith("bench_app_series_total"))
    return {"series": len(lines), "app_series": app_series, "boots": boots, "s001": s001}


def scrape(url, n, timeout=30.0):
    """n timed scrapes over one keep-alive connection; ms per scrape (request to last byte)."""
    conn, path = _conn(url, timeout)
    times, errors, last, reconnects = [], 0, b"", 0
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            if conn.sock is None and times:
                reconnects += 1
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
            if r.status != 200:
                errors += 1
                continue
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            continue
        times.append((time.perf_counter() - t0) * 1000.0)
        last = body
    conn.close()
    out = {"n": n, "ok": len(times), "errors": errors, "reconnects": reconnects, "bytes": len(last)}
    if times:
        out.update(first_ms=round(times[0], 3), median_ms=round(statistics.median(times), 3),
                   p25_ms=round(pct(times, 25), 3), p75_ms=round(pct(times, 75), 3),
                   p90_ms=round(pct(times, 90), 3), min_ms=round(min(times), 3), max_ms=round(max(times), 3),
                   mean_ms=round(statistics.fmean(times), 3))
    out.update(parse_body(last))
    return out


def dir_stats(d):
    files, size = 0, 0
    for root, _, names in os.walk(d):
        for nm in names:
            files += 1
            try:
                size += os.stat(os.path.join(root, nm)).st_size
            except OSError:
                pass
    return files, size


def children(pid):
    kids = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                kids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    out = []
    for k in kids:
        try:
            with open(f"/proc/{k}/cmdline", "rb") as f:
                out.append((k, f.read().replace(b"\0", b" ").decode(errors="replace").strip()))
        except OSError:
            pass
    return out


def group_pids(pgid):
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rfind(")") + 2:].split()
        if int(fields[2]) == pgid:          # state ppid pgrp ...
            pids.append(int(d))
    return pids


def stop(proc, log):
    pid = proc.pid
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        log(f"leader {pid} ignored SIGTERM for 15 s; SIGKILL")
        os.kill(pid, signal.SIGKILL)
        proc.wait()
    for _ in range(50):
        if not group_pids(pid):
            break
        time.sleep(0.1)
    for p in group_pids(pid):
        log(f"killing leftover member {p} of group {pid}")
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def metrics_state(url):
    try:
        st, body = get_once(url, timeout=10)
    except (OSError, http.client.HTTPException):
        return None
    return parse_body(body) if st == 200 else None


class ChurnServer:
    """One pre-fork server under test: started in its own session, driven to N worker restarts
    (--max-requests 1 and one GET / each), stopped by its own PID."""

    def __init__(self, a, cmd, log_path, mp_dir, app_url, metrics_url, log):
        self.a, self.cmd, self.mp_dir, self.app_url, self.metrics_url, self.log = a, cmd, mp_dir, app_url, metrics_url, log
        os.makedirs(mp_dir, exist_ok=True)
        self.logf = open(log_path, "wb")
        self.log_path = log_path
        log("starting: " + " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        self.served = 0

    def wait_ready(self):
        """Seconds until all workers booted (boots counter == workers), or an error string."""
        a, t0, st = self.a, time.monotonic(), None
        while time.monotonic() - t0 < a.ready_timeout:
            if self.proc.poll() is not None:
                break
            st = metrics_state(self.metrics_url)
            if st and st["boots"] is not None and st["boots"] >= a.workers:
                time.sleep(a.settle)
                return round(time.monotonic() - t0, 2), None
            time.sleep(0.2)
        return None, f"not-ready: exit={self.proc.poll()} last scrape={st}"

    def restart_to(self, cp):
        """GET / until cp requests were served in all (one worker restart each); then wait until the
        replacements have booted and let it settle.  Returns (point dict, error string or None)."""
        a, t1 = self.a, time.monotonic()
        fails, phase0, last_ok = 0, self.served, time.monotonic()
        while self.served < cp:
            try:
                code, body = get_once(self.app_url, timeout=a.request_timeout)
            except (OSError, http.client.HTTPException) as e:
                code, body = None, (type(e).__name__ + ": " + str(e)).encode()
            if code == 200:
                self.served += 1
                fails, last_ok = 0, time.monotonic()
            else:
                fails += 1
                if fails > 50 or time.monotonic() - last_ok > a.stall_timeout:
                    kids = children(self.proc.pid)
                    return None, (f"stalled: no request served for {time.monotonic() - last_ok:.0f} s after "
                                  f"{self.served} restarts (master alive, {len(kids)} children; last: {code} {body[:80]!r})")
                time.sleep(0.1)
            if self.proc.poll() is not None:
                return None, f"server exited ({self.proc.returncode}) after {self.served} restarts"
        churn_s = time.monotonic() - t1
        want = a.workers + self.served
        t2, st = time.monotonic(), None
        while time.monotonic() - t2 < a.settle_timeout:
            st = metrics_state(self.metrics_url)
            if st and st["boots"] is not None and st["boots"] >= want:
                break
            time.sleep(0.2)
        time.sleep(a.settle)
        files, size = dir_stats(self.mp_dir)
        kids = children(self.proc.pid)
        return {"restarts": self.served, "churn_s": round(churn_s, 2),
                "restarts_per_s": round((self.served - phase0) / churn_s, 1) if churn_s else None,
                "boots_expected": want, "boots_seen_before_scrape": st and st["boots"],
                "s001_expected": want, "mp_files": files, "mp_bytes": size,
                "children": len(kids), "children_titles": sorted({c[1][:60] for c in kids})}, None

    def stop(self):
        alive = self.proc.poll() is None
        stop(self.proc, self.log)
        self.logf.close()
        return alive


def churn(a):
    def log(msg):
        print(f"[metrics-churn] {a.name}: {msg}", file=sys.stderr, flush=True)

    rec = {"kind": "churn", "name": a.name, "config": a.config, "workers": a.workers, "command": " ".join(a.cmd),
           "scrapes": a.scrapes, "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "points": []}
    srv = ChurnServer(a, a.cmd, a.log, a.mp_dir, a.app_url, a.metrics_url, log)
    rec["pid"] = srv.proc.pid
    status = "ok"
    try:
        ready, err = srv.wait_ready()
        if err:
            status = err
            log(status)
            return rec, status
        rec["ready_s"] = ready
        for cp in a.checkpoints:
            point, err = srv.restart_to(cp)
            if err:
                status = err
                log(status)
                return rec, status
            s = scrape(a.metrics_url, a.scrapes)
            point["mp_files_after_scrapes"], point["mp_bytes_after_scrapes"] = dir_stats(a.mp_dir)
            point["scrape"] = s
            rec["points"].append(point)
            log(f"{point['restarts']} restarts: {point['mp_files']} files, scrape median {s.get('median_ms')} ms "
                f"(p90 {s.get('p90_ms')}), {s['bytes']} B, boots {s['boots']} (expected {point['boots_expected']}), "
                f"s001 {s['s001']}")
    finally:
        rec["alive_at_end"] = srv.stop()
        rec["status"] = status
        rec["server_log_bytes"] = os.path.getsize(a.log) if os.path.exists(a.log) else 0
        with open(a.out, "a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
    return rec, status


def exporter_pid(master_pid):
    """The child of the master whose title is `ferrocorn: exporter ...` (None if not found)."""
    for pid, title in children(master_pid):
        if title.startswith("ferrocorn: exporter"):
            return pid
    return None


def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])          # utime + stime, clock ticks
    except (OSError, IndexError, ValueError, TypeError):
        return None


def interleaved(servers, rounds):
    """`rounds` rounds of one scrape per server, order alternating (A B, B A, ...), each server over
    its own keep-alive connection.  Per server: wall ms per scrape and the exporter's CPU ms per scrape."""
    conns = [_conn(s.metrics_url, 30) for s in servers]
    pids = [exporter_pid(s.proc.pid) for s in servers]
    hz = os.sysconf("SC_CLK_TCK")
    times, last = [[] for _ in servers], [b"" for _ in servers]
    c0 = [cpu_ticks(p) for p in pids]
    for i in range(rounds):
        for j in (range(len(servers)) if i % 2 == 0 else reversed(range(len(servers)))):
            conn, path = conns[j]
            t0 = time.perf_counter()
            try:
                conn.request("GET", path)
                r = conn.getresponse()
                body = r.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                continue
            if r.status == 200:
                times[j].append((time.perf_counter() - t0) * 1000.0)
                last[j] = body
    c1 = [cpu_ticks(p) for p in pids]
    for c, _ in conns:
        c.close()
    out = []
    for j, t in enumerate(times):
        o = {"ok": len(t), "bytes": len(last[j]), **parse_body(last[j])}
        if t:
            o.update(median_ms=round(statistics.median(t), 3), p25_ms=round(pct(t, 25), 3),
                     p75_ms=round(pct(t, 75), 3))
        if c0[j] is not None and c1[j] is not None and t:
            o["exporter_cpu_ms"] = round((c1[j] - c0[j]) * 1000.0 / hz / len(t), 3)
        out.append(o)
    return out


def paired(a):
    """Two servers side by side, A and B.  Both are driven to `low` restarts and scraped in turn
    (A B, B A, ...); then B alone is driven to `high` restarts and both are scraped in turn again.
    B after / B before is the churn question; A after / A before is what the machine did meanwhile
    (A is unchanged); their quotient removes that drift."""
    def log(msg):
        print(f"[metrics-pair] {a.name}: {msg}", file=sys.stderr, flush=True)

    rec = {"kind": "pair", "name": a.name, "config": a.config, "workers": a.workers, "command": " ".join(a.cmd),
           "rounds": a.scrapes, "low": a.low, "high": a.high,
           "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    status, servers = "ok", []

    def fail(msg):
        nonlocal status
        status = msg
        log(msg)
        return rec, status

    try:
        for tag, ports in (("A", a.ports_a), ("B", a.ports_b)):
            app_port, metrics_port = ports.split(",")
            mp = f"{a.mp_dir}-{tag}"
            cmd = [x.replace("{APP_PORT}", app_port).replace("{METRICS_PORT}", metrics_port).replace("{MP_DIR}", mp)
                   for x in a.cmd]
            srv = ChurnServer(a, cmd, f"{a.log}.{tag}", mp, f"http://127.0.0.1:{app_port}/",
                              f"http://127.0.0.1:{metrics_port}/metrics", log)
            servers.append(srv)
            _, err = srv.wait_ready()
            point, err = (None, err) if err else srv.restart_to(a.low)
            if err:
                return fail(f"{tag}: {err}")
            rec[f"{tag}_low"] = point
        interleaved(servers, a.warmup)
        for j, s in enumerate(interleaved(servers, a.scrapes)):
            rec["AB"[j] + "_low"]["scrape"] = s
        point, err = servers[1].restart_to(a.high)
        if err:
            return fail(f"B: {err}")
        rec["B_high"] = point
        interleaved(servers, a.warmup)
        after = interleaved(servers, a.scrapes)
        rec["A_again"] = {"restarts": servers[0].served, "mp_files": dir_stats(servers[0].mp_dir)[0], "scrape": after[0]}
        rec["B_high"]["scrape"] = after[1]
        for key, unit in (("median_ms", "wall"), ("exporter_cpu_ms", "cpu")):
            try:
                b = after[1][key] / rec["B_low"]["scrape"][key]
                ctl = after[0][key] / rec["A_low"]["scrape"][key]
            except (KeyError, ZeroDivisionError):
                continue
            rec[f"{unit}_b_high_over_low"] = round(b, 3)
            rec[f"{unit}_a_drift"] = round(ctl, 3)
            rec[f"{unit}_corrected"] = round(b / ctl, 3)
        log(f"B {a.low} -> {a.high} restarts: wall {rec['B_low']['scrape'].get('median_ms')} -> "
            f"{after[1].get('median_ms')} ms (x{rec.get('wall_b_high_over_low')}, A drift x{rec.get('wall_a_drift')}, "
            f"corrected x{rec.get('wall_corrected')}); exporter CPU {rec['B_low']['scrape'].get('exporter_cpu_ms')} -> "
            f"{after[1].get('exporter_cpu_ms')} ms/scrape (corrected x{rec.get('cpu_corrected')}); files "
            f"{rec['B_low']['mp_files']} -> {rec['B_high']['mp_files']}")
    finally:
        rec["alive_at_end"] = [s.stop() for s in servers]
        for s in servers:
            shutil.rmtree(s.mp_dir, ignore_errors=True)
        rec["status"] = status
        with open(a.out, "a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
    return rec, status


def ir_once(a, n, log):
    """Run the (valgrind-wrapped) command, send n keep-alive GET / and stop it; Ir of the worker."""
    outdir = f"{a.workdir}/n{n}"
    os.makedirs(outdir, exist_ok=True)
    for fn in os.listdir(outdir):
        os.unlink(os.path.join(outdir, fn))
    cmd = [x.replace("{OUTDIR}", outdir) for x in a.cmd]
    logf = open(f"{outdir}/server.log", "wb")
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    workers = []
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120:
            try:
                if get_once(a.app_url, timeout=10)[0] == 200:
                    break
            except (OSError, http.client.HTTPException):
                pass
            if proc.poll() is not None:
                return None, f"exited {proc.returncode} before ready"
            time.sleep(0.2)
        workers = [pid for pid, title in children(proc.pid) if "work" in title]
        conn, path = _conn(a.app_url, 60)
        for _ in range(n):
            conn.request("GET", path)
            conn.getresponse().read()
        conn.close()
    finally:
        stop(proc, log)
        logf.close()
    irs = {}
    for fn in os.listdir(outdir):
        if fn.startswith("cg."):
            for line in open(os.path.join(outdir, fn)):
                if line.startswith("summary:"):
                    irs[int(fn.split(".")[1])] = int(line.split()[1])
    # under valgrind the process titles are not rewritten: take the worker pids from the log
    booted = [int(x) for x in re.findall(rb"Booting worker with pid: (\d+)", open(f"{outdir}/server.log", "rb").read())]
    w = [irs[p] for p in (booted or workers) if p in irs]
    if len(w) != 1:
        return None, f"worker Ir not found (workers {workers}, files {sorted(irs)})"
    return w[0], "ok"


def irs(a):
    def log(msg):
        print(f"[metrics-ir] {a.name}: {msg}", file=sys.stderr, flush=True)
    rec = {"kind": "ir", "name": a.name, "command": " ".join(a.cmd), "n1": a.n1, "n2": a.n2}
    log(f"valgrind --tool=cachegrind, {a.n1} then {a.n2} keep-alive requests")
    i1, st1 = ir_once(a, a.n1, log)
    i2, st2 = (ir_once(a, a.n2, log) if i1 else (None, "skipped"))
    rec.update(ir_n1=i1, ir_n2=i2, status=st1 if st1 != "ok" else st2)
    if i1 and i2:
        rec["ir_per_request"] = round((i2 - i1) / (a.n2 - a.n1), 1)
        log(f"{rec['ir_per_request']} instructions per request in the worker")
    with open(a.out, "a") as f:
        f.write(json.dumps(rec, sort_keys=True) + "\n")
    return rec["status"]


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "irs":
        argv = sys.argv[2:]
        i = argv.index("--")
        p = argparse.ArgumentParser(prog="metrics_scrape.py irs")
        p.add_argument("--name", required=True)
        p.add_argument("--app-url", required=True)
        p.add_argument("--workdir", required=True)
        p.add_argument("--n1", type=int, default=2000)
        p.add_argument("--n2", type=int, default=12000)
        p.add_argument("--out", required=True)
        a = p.parse_args(argv[:i])
        a.cmd = argv[i + 1:]
        return 0 if irs(a) == "ok" else 1
    if len(sys.argv) >= 3 and sys.argv[1] == "scrape":
        print(json.dumps(scrape(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 200)))
        return 0
    if len(sys.argv) >= 2 and sys.argv[1] in ("churn", "pair"):
        sub = sys.argv[1]
        argv = sys.argv[2:]
        if "--" not in argv:
            sys.exit(f"{sub}: need -- COMMAND")
        i = argv.index("--")
        p = argparse.ArgumentParser(prog=f"metrics_scrape.py {sub}")
        p.add_argument("--name", required=True)
        p.add_argument("--config", default="")
        p.add_argument("--mp-dir", required=True)
        p.add_argument("--workers", type=int, default=8)
        p.add_argument("--out", required=True)
        p.add_argument("--log", required=True)
        p.add_argument("--ready-timeout", type=float, default=60)
        p.add_argument("--settle-timeout", type=float, default=60)
        p.add_argument("--settle", type=float, default=1.5)
        p.add_argument("--request-timeout", type=float, default=15)
        p.add_argument("--stall-timeout", type=float, default=45)
        if sub == "churn":
            p.add_argument("--app-url", required=True)
            p.add_argument("--metrics-url", required=True)
            p.add_argument("--checkpoints", default="10,1000")
            p.add_argument("--scrapes", type=int, default=200)
        else:
            p.add_argument("--ports-a", required=True)
            p.add_argument("--ports-b", required=True)
            p.add_argument("--low", type=int, default=10)
            p.add_argument("--high", type=int, default=1000)
            p.add_argument("--scrapes", type=int, default=400, help="rounds per phase")
            p.add_argument("--warmup", type=int, default=50, help="unmeasured rounds before each phase")
        a = p.parse_args(argv[:i])
        a.cmd = argv[i + 1:]
        if sub == "churn":
            a.checkpoints = sorted(int(x) for x in a.checkpoints.split(",") if x.strip())
            _, status = churn(a)
        else:
            _, status = paired(a)
        return 0 if status == "ok" else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
