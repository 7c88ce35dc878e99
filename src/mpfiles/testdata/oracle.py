"""Test oracle for src/mpfiles: writes .db files with prometheus_client's own
writer under fake pids, and prints what its MultiProcessCollector computes.

  oracle.py gen DIR PID...        metrics of every kind and gauge mode per pid
  oracle.py collect DIR           JSON: {"sorted": merge(sorted files), "collect": collect()}
  oracle.py mark_dead DIR PID     prometheus_client.multiprocess.mark_process_dead
  oracle.py writer DIR PID N      appends N new series, one by one (growing the file)
  oracle.py series DIR PID N      N series in counters, histograms and gauges
"""
import glob
import json
import os
import struct
import sys


def hexf(v):
    return struct.pack('<d', float(v)).hex()


def families(metrics):
    out = []
    for m in metrics:
        out.append({
            'name': m.name, 'help': m.documentation, 'type': m.type,
            'samples': [[s.name, [[k, v] for k, v in s.labels.items()], hexf(s.value),
                         None if s.timestamp is None else hexf(s.timestamp)]
                        for s in m.samples],
        })
    return out


def use_pid(pid):
    from prometheus_client import values
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: pid)


MODES = ['all', 'liveall', 'min', 'livemin', 'max', 'livemax', 'sum', 'livesum',
         'mostrecent', 'livemostrecent']


def gen(pids):
    from prometheus_client import Counter, Gauge, Histogram, Summary
    for i, pid in enumerate(pids):
        use_pid(pid)
        k = i + 1
        c = Counter('app_requests', 'Requests "served"\nby the app', ['method', 'code'], registry=None)
        c.labels('GET', '200').inc(k)
        c.labels('POST', '500').inc(0.5 * k)
        c.labels('GET', '200').inc(0.25)
        if k % 2 == 0:
            c.labels('PUT', '201').inc(3)
        plain = Counter('app_plain', 'No labels', registry=None)
        plain.inc(2 ** k)
        uni = Counter('app_unicode', 'Ünïcødé ✓', ['name'], registry=None)
        uni.labels('héllo "wörld"\\ ✓').inc(k)
        h = Histogram('app_latency_seconds', 'Latency', ['route'], registry=None)
        for v in (0.001, 0.02, 0.3, 4.0, 100.0)[: 2 + k]:
            h.labels('/a').observe(v)
        h.labels('/b').observe(0.0625 * k)
        h2 = Histogram('app_big', 'Big buckets', buckets=[0.5, 1, 1234567, 1e20], registry=None)
        h2.observe(0.25 * k)
        h2.observe(2000000)
        s = Summary('app_payload_bytes', 'Payload', ['kind'], registry=None)
        s.labels('json').observe(128 * k)
        s.labels('form').observe(0.5)
        for mode in MODES:
            g = Gauge('app_g_' + mode, 'Gauge ' + mode, ['shard'], multiprocess_mode=mode, registry=None)
            if mode.endswith('mostrecent'):
                g.labels('a').set(10 * k + 0.5)
                g.labels('b').set(-k)
                g.labels('never')  # created, never set: timestamp 0
            else:
                g.labels('a').set(10 * k + 0.5)
                g.labels('b').inc(k)
                g.labels('b').dec(0.25)
                g.labels('z').set(-k)
        up = Gauge('app_userpid', 'User pid label', ['pid'], multiprocess_mode='max', registry=None)
        up.labels('x').set(k)
        upa = Gauge('app_userpid_all', 'User pid label, all', ['pid', 'a'], registry=None)
        upa.labels('x', 'y').set(k)
        nolab = Gauge('app_nolabels_all', 'No labels, all', registry=None)
        nolab.set(k * 1.5)


def series(pid, n):
    from prometheus_client import Counter, Gauge, Histogram
    use_pid(pid)
    c = Counter('bench_requests', 'Requests', ['endpoint'], registry=None)
    g = Gauge('bench_gauge', 'Gauge', ['endpoint'], multiprocess_mode='sum', registry=None)
    h = Histogram('bench_latency', 'Latency', ['endpoint'], buckets=[0.01, 0.1, 1], registry=None)
    made = 0
    i = 0
    while made < n:
        c.labels('/e%d' % i).inc(i)
        g.labels('/e%d' % i).set(i)
        h.labels('/e%d' % i).observe(0.05)
        made += 1 + 1 + 4  # counter, gauge, 3 buckets + sum
        i += 1


def writer(pid, n):
    from prometheus_client import Counter
    use_pid(pid)
    c = Counter('grow', 'Growing', ['i'], registry=None)
    for i in range(n):
        c.labels('label-value-%06d-%s' % (i, 'x' * (i % 50))).inc(i)
    print('done', flush=True)


def main():
    cmd, d = sys.argv[1], sys.argv[2]
    os.environ['PROMETHEUS_MULTIPROC_DIR'] = d
    from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
    if cmd == 'gen':
        gen([int(p) for p in sys.argv[3:]])
    elif cmd == 'collect':
        files = sorted(glob.glob(os.path.join(d, '*.db')))
        out = {'sorted': families(MultiProcessCollector.merge(files, accumulate=True)),
               'collect': families(MultiProcessCollector(None, d).collect())}
        json.dump(out, sys.stdout)
    elif cmd == 'mark_dead':
        mark_process_dead(int(sys.argv[3]), d)
    elif cmd == 'writer':
        writer(int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == 'series':
        series(int(sys.argv[3]), int(sys.argv[4]))
    else:
        raise SystemExit('unknown command ' + cmd)


if __name__ == '__main__':
    main()
