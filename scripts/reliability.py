#!/usr/bin/env python3
"""The reliability battery of docs/DURABILITY.md: runs the real binaries and prints a table.

    scripts/reliability.py [--short] [--only crash,corrupt,disk] [--bin DIR] [--seed N]

crash    SIGKILLs `produce --source` at random moments (--fsync batch and always); after each
         kill: readers on the log as the kill left it (every acknowledged record there once,
         in order, nothing torn served), recovery on open (a writer opening the partitions),
         `logd verify` clean, and a full `logd recover` scan for the speed per GB. Reports
         kills, acknowledged, lost, duplicates, recovery times.
corrupt  flips bits or zeroes ranges in segments (plain and compacted), indexes, time
         indexes, topic.json, recovery, cleaner and source checkpoints, group offsets and
         table files; checks that `logd verify` names the file and the position, that readers
         (from the start, by offset, by time, by group) serve only intact records and skip
         none for a damaged cache, and that `logd repair` makes it clean.
disk     fills a small tmpfs (needs root) during `produce` and `store`: exit 1, a clear
         message, nothing partial visible, and appends to the same topic and table work
         again once space is freed.
concurrency  a writer on every partition, 8 readers following (one of them slow), retention
         deleting segments under them and `logd verify` in a loop, for 60 s (short: 15 s): no
         crash, no SIGBUS, no reader error, every record read or reported as removed by
         retention.

Exit status 1 when any check fails; the failures are listed after the table.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("KAPPA_BIN") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
FAILURES = []
ROWS = []
I_RE = re.compile(rb'"i":(\d+)')


def tool(name):
    return os.path.join(BIN, name)


def run(args, **kw):
    return subprocess.run(args, capture_output=True, **kw)


def fail(what):
    FAILURES.append(what)
    print("FAIL " + what, file=sys.stderr)


def dump(path, n, start=0):
    with open(path, "w") as f:
        for i in range(start, start + n):
            f.write('{"v":"k%d","i":%d,"temp":%d.5,"pad":"%s"}\n' % (i % 64, i, i % 40, "x" * (i % 50)))


def values(log, topic):
    """(i, key) of every record of the topic, partition by partition, in offset order."""
    o = run([tool("consume"), "--log", log, "-t", topic, "--value"])
    if o.returncode != 0:
        return None, o.stderr.decode(errors="replace")
    return [int(m.group(1)) for m in I_RE.finditer(o.stdout)], ""


# ---------------------------------------------------------------- crash loop

def crash(kills, work, rng):
    for mode, n in (("batch", 1_000_000), ("always", 4_000)):
        src = os.path.join(work, "dump-%s.ndjson" % mode)
        dump(src, n)
        log = os.path.join(work, "crash-" + mode)
        # Kill times are drawn over a whole clean run's duration, measured first.
        t0 = time.monotonic()
        run([tool("produce"), "--log", log, "-t", "calibrate", "-q", "--partitions", "3",
             "--key", "v", "--fsync", mode, "--source", "dump", src], check=True)
        window = time.monotonic() - t0
        run([tool("logd"), "--log", log, "topics", "delete", "calibrate"], check=True)
        done_kills = acked_total = lost = dups = 0
        rounds = 0
        scanned = 0
        recover_s = 0.0
        open_s = []
        while done_kills < kills:
            rounds += 1
            topic = "r%d" % rounds
            acks = os.path.join(work, "acks-%s-%d" % (mode, rounds))
            args = [tool("produce"), "--log", log, "-t", topic, "-q", "--partitions", "3",
                    "--key", "v", "--fsync", mode, "--source", "dump", "--acks", acks, src]
            while True:
                p = subprocess.Popen(args, stderr=subprocess.PIPE)
                try:
                    p.wait(timeout=rng.uniform(0.0, window))
                except subprocess.TimeoutExpired:
                    p.send_signal(signal.SIGKILL)
                    p.wait()
                finished = p.returncode == 0
                if p.returncode not in (0, -signal.SIGKILL):
                    fail("crash %s: produce exited %s: %s" % (mode, p.returncode, p.stderr.read().decode()))
                    return
                if not finished:
                    done_kills += 1
                if not os.path.exists(os.path.join(log, "topics", topic, "topic.json")):
                    # Killed before the topic was created (atomically): nothing to check.
                    if os.path.exists(acks) and os.path.getsize(acks):
                        fail("crash %s: acknowledgements without a topic" % mode)
                    continue
                acked = 0
                if os.path.exists(acks):
                    for line in open(acks, errors="replace"):
                        try:
                            acked = max(acked, json.loads(line)["lines"])
                        except (ValueError, KeyError):
                            pass  # a line cut by the kill is no acknowledgement
                # Readers first, on the files as the kill left them (a torn tail included).
                got, err = values(log, topic)
                if got is None:
                    fail("crash %s: consume before recovery: %s" % (mode, err))
                    return
                # Recovery on open: what the next writer does (from its checkpoint).
                t0 = time.monotonic()
                r = run([tool("logd"), "--log", log, "retention", "-t", topic])
                open_s.append(time.monotonic() - t0)
                if r.returncode != 0:
                    fail("crash %s: recovery on open: %s" % (mode, r.stderr.decode()))
                v = run([tool("logd"), "--log", log, "verify", "-t", topic])
                if v.returncode != 0:
                    fail("crash %s: verify after kill %d: %s" % (mode, done_kills, v.stdout.decode()[-500:]))
                after, err = values(log, topic)
                if after != got:
                    fail("crash %s: recovery changed what readers see (%s)" % (mode, err or "records differ"))
                # A full scan of every segment, for the speed of recovery per GB.
                t0 = time.monotonic()
                r = run([tool("logd"), "--log", log, "recover", "-t", topic])
                recover_s += time.monotonic() - t0
                if r.returncode != 0:
                    fail("crash %s: logd recover: %s" % (mode, r.stderr.decode()))
                scanned += sum(os.path.getsize(os.path.join(dp, f))
                               for dp, _, fs in os.walk(os.path.join(log, "topics", topic))
                               for f in fs if f.endswith(".log"))
                seen = {}
                last_by_key = {}
                for i in got:
                    seen[i] = seen.get(i, 0) + 1
                    k = i % 64
                    if last_by_key.get(k, -1) >= i:
                        fail("crash %s: key k%d out of order (%d after %d)" % (mode, k, i, last_by_key[k]))
                    last_by_key[k] = i
                d = sum(c - 1 for c in seen.values() if c > 1)
                missing = sum(1 for i in range(acked) if i not in seen)
                dups += d
                lost += missing
                if d or missing:
                    fail("crash %s round %d: %d duplicated, %d acknowledged lost" % (mode, rounds, d, missing))
                if finished:
                    if len(seen) != n:
                        fail("crash %s round %d: finished with %d of %d records" % (mode, rounds, len(seen), n))
                    acked_total += n
                    break
                if done_kills >= kills:
                    acked_total += acked
                    break
        gbps = scanned / 1e9 / recover_s if recover_s else 0
        open_s.sort()
        p50 = open_s[len(open_s) // 2] if open_s else 0
        ROWS.append(("crash loop, --fsync " + mode,
                     "%d kills over %d inputs of %d lines" % (done_kills, rounds, n),
                     "acknowledged %d; lost %d; duplicates %d; recovery on open p50 %.0f ms, max %.0f ms "
                     "(process included); full scan %.2f s per GB (%.1f MB in %.2f s)"
                     % (acked_total, lost, dups, p50 * 1000, (open_s[-1] if open_s else 0) * 1000,
                        1 / gbps if gbps else 0, scanned / 1e6, recover_s)))


# ---------------------------------------------------------------- corruption trials

def envelopes(log, topic, *extra):
    """(exit code, lines) of `consume -t topic` with extra flags."""
    o = run([tool("consume"), "--log", log, "-t", topic, *extra])
    return o.returncode, o.stdout.splitlines()


# Readers asked in every trial: (topic, flags). By offset and by time they go through the
# offset and time indexes.
QUERIES = [
    ("t", ()),
    ("t", ("--partition", "0", "--from", "2500", "--max", "300")),
    ("t", ("--partition", "1", "--from", "7000", "--max", "300")),
    ("t", ("--from", "@1795000004000", "--max", "300")),
    ("t", ("--from", "@1795000011500", "--max", "300")),
    ("c", ()),
    ("c", ("--from", "@1795000008000", "--max", "100")),
    ("s", ()),
]


def build_pristine(base):
    os.makedirs(base)
    log = os.path.join(base, "log")
    src = os.path.join(base, "in.ndjson")
    dump(src, 20_000)
    # Records with timestamps, so time seeks have something to find.
    with open(src) as f, open(src + ".ts", "w") as g:
        for i, line in enumerate(f):
            g.write(line[:-2] + ',"ts":%d}\n' % (1795000000000 + i))
    run([tool("logd"), "--log", log, "topics", "create", "t", "--partitions", "2",
         "--segment-bytes", "64KiB"], check=True)
    run([tool("produce"), "--log", log, "-t", "t", "-q", "--key", "v", "--ts", "ts", src + ".ts"], check=True)
    run([tool("consume"), "--log", log, "-t", "t", "--group", "g", "--max", "5000", "-q"], check=True)
    # A compacted topic (sparse frames, a cleaner checkpoint) and a --source one.
    run([tool("logd"), "--log", log, "topics", "create", "c", "--segment-bytes", "16KiB",
         "--cleanup-policy", "compact"], check=True)
    for part in range(4):
        run([tool("produce"), "--log", log, "-t", "c", "-q", "--key", "v", "--ts", "ts"],
            input=b"".join(open(src + ".ts", "rb").readlines()[part * 2500:(part + 1) * 2500]), check=True)
    run([tool("logd"), "--log", log, "compact", "--force"], check=True)
    run([tool("produce"), "--log", log, "-t", "s", "-q", "--key", "v", "--source", "dump", src], check=True)
    run([tool("store"), "--log", log, "--table", "tb", "--key", "v", "-q"], input=run(
        [tool("consume"), "--log", log, "-t", "t", "--value"], check=True).stdout, check=True)
    table = run([tool("store"), "--log", log, "export", "tb"], check=True).stdout
    records = {}
    for topic in ("t", "c", "s"):
        for line in envelopes(log, topic)[1]:
            e = json.loads(line)
            records[(topic, e["partition"], e["offset"])] = line
    answers = {q: envelopes(log, q[0], *q[1])[1] for q in QUERIES}
    return log, records, set(table.splitlines()), answers, src


def targets(log):
    out = []
    for dp, _, fs in os.walk(log):
        for f in fs:
            p = os.path.join(dp, f)
            rel = os.path.relpath(p, log)
            if f.endswith(".lock") or f == ".lock" or os.path.getsize(p) == 0:
                continue
            if rel.startswith("tables"):
                kind = "table " + ("changelog" if f.endswith(".log") else f.split(".")[-1])
            elif f.endswith(".log"):
                kind = "compacted segment" if rel.startswith("topics/c/") else "segment"
            elif f.endswith(".timeindex"):
                kind = "time index"
            elif f.endswith(".index"):
                kind = "index"
            elif f == "topic.json":
                kind = "topic.json"
            elif rel.startswith("groups"):
                kind = "group offsets"
            elif f == "checkpoint.json":
                kind = "recovery checkpoint"
            elif f == "cleaner.json":
                kind = "cleaner checkpoint"
            elif "/sources/" in rel:
                kind = "source checkpoint"
            else:
                continue
            out.append((kind, p))
    return out


def damage(path, rng):
    b = bytearray(open(path, "rb").read())
    before = bytes(b)
    how = rng.choice(["bits", "zero"])
    if how == "bits":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    else:
        i = rng.randrange(len(b))
        n = rng.randint(1, 4096)
        b[i:i + n] = bytes(len(b[i:i + n]))
    if bytes(b) == before:
        return None
    open(path, "wb").write(b)
    return how


# Damage to these costs no record: readers answer exactly as before it.
CACHES = ("index", "time index", "recovery checkpoint", "cleaner checkpoint", "source checkpoint")
BINARY = ("segment", "compacted segment", "index", "time index")


def corrupt(trials, work, rng):
    pristine, records, table, answers, src = build_pristine(os.path.join(work, "pristine"))
    stats = {}
    values_all = {json.dumps(json.loads(l)["value"], separators=(",", ":")).encode()
                  for k, l in records.items() if k[0] == "t"}
    trial = 0
    while trial < trials:
        w = os.path.join(work, "trial")
        shutil.rmtree(w, ignore_errors=True)
        shutil.copytree(pristine, w, symlinks=True)
        choices = targets(w)
        kind = rng.choice(sorted({k for k, _ in choices}))
        path = rng.choice([p for k, p in choices if k == kind])
        how = damage(path, rng)
        if how is None:
            continue
        trial += 1
        s = stats.setdefault(kind, {"trials": 0, "detected": 0, "served_bad": 0, "skipped": 0,
                                    "clean_after": 0, "lost": 0})
        s["trials"] += 1
        rel = os.path.relpath(path, w)
        topic = rel.split("/")[1] if rel.startswith("topics/") else None
        v = run([tool("logd"), "--log", w, "verify"])
        out = v.stdout.decode(errors="replace")
        named = [l for l in out.splitlines() if l.startswith("DAMAGE") and rel in l]
        if v.returncode == 1 and named and (kind not in BINARY or any("position" in l for l in named)):
            s["detected"] += 1
        else:
            fail("corrupt %d: %s (%s) not reported by verify with its path and position (exit %d): %s"
                 % (trial, rel, how, v.returncode, out[-300:]))
        # Readers: every record served is one of the original ones, unchanged; for a damaged
        # cache, exactly what the intact log gives.
        for q in QUERIES:
            code, got = envelopes(w, q[0], *q[1])
            for line in got:
                try:
                    e = json.loads(line)
                    ok = records.get((q[0], e["partition"], e["offset"])) == line
                except (ValueError, KeyError):
                    ok = False
                if not ok:
                    s["served_bad"] += 1
                    fail("corrupt %d: %s (%s): consume %s served a damaged record: %r"
                         % (trial, rel, how, " ".join(q[1]), line[:200]))
                    break
            if kind in CACHES and q[0] == topic and got != answers[q]:
                s["skipped"] += 1
                fail("corrupt %d: %s (%s): consume -t %s %s: %d records instead of %d"
                     % (trial, rel, how, q[0], " ".join(q[1]), len(got), len(answers[q])))
            if code not in (0, 1, 2):
                fail("corrupt %d: consume exit %d" % (trial, code))
        code, got = envelopes(w, "t", "--group", "g", "--no-commit")
        if code not in (0, 1, 2):
            fail("corrupt %d: consume --group exit %d" % (trial, code))
        for line in got:
            e = json.loads(line)
            if records.get(("t", e["partition"], e["offset"])) != line:
                s["served_bad"] += 1
                fail("corrupt %d: %s (%s): consume --group served a damaged record" % (trial, rel, how))
                break
        x = run([tool("store"), "--log", w, "export", "tb"])
        for line in x.stdout.splitlines():
            if line not in table:
                s["served_bad"] += 1
                fail("corrupt %d: %s (%s): store served a damaged row: %r" % (trial, rel, how, line[:200]))
                break
        if x.returncode not in (0, 1, 2):
            fail("corrupt %d: store export exit %d: %s" % (trial, x.returncode, x.stderr.decode()[-300:]))
        # Repair, then the log is clean again.
        if kind in ("group offsets",) or kind.startswith("table"):
            continue  # not the log's to repair: detection and readers are what is checked
        if kind == "segment":
            # The same damage repaired with --salvage: intact records after it are kept.
            w2 = w + "-salvage"
            shutil.rmtree(w2, ignore_errors=True)
            shutil.copytree(w, w2, symlinks=True)
            r2 = run([tool("logd"), "--log", w2, "repair", "--salvage"])
            m2 = re.search(rb"(\d+) records lost", r2.stdout)
            s["salvage_lost"] = s.get("salvage_lost", 0) + (int(m2.group(1)) if m2 else 0)
            vals = run([tool("consume"), "--log", w2, "-t", "t", "--value"]).stdout.splitlines()
            if r2.returncode != 0 or run([tool("logd"), "--log", w2, "verify"]).returncode != 0:
                fail("corrupt %d: %s (%s): repair --salvage: %s" % (trial, rel, how, (r2.stdout + r2.stderr).decode()[-300:]))
            if len(set(vals)) != len(vals) or not set(vals) <= values_all:
                fail("corrupt %d: %s (%s): after --salvage, records that were not written, or twice" % (trial, rel, how))
        r = run([tool("logd"), "--log", w, "repair"])
        if r.returncode != 0:
            fail("corrupt %d: %s (%s): repair exit %d: %s" % (trial, rel, how, r.returncode, r.stderr.decode()[-300:]))
            continue
        m = re.search(rb"(\d+) records lost", r.stdout)
        lost = int(m.group(1)) if m else 0
        s["lost"] += lost
        v2 = run([tool("logd"), "--log", w, "verify"])
        if v2.returncode == 0:
            s["clean_after"] += 1
        else:
            fail("corrupt %d: %s (%s): verify after repair: %s" % (trial, rel, how, v2.stdout.decode()[-400:]))
        if kind in CACHES + ("topic.json",) and lost:
            fail("corrupt %d: %s (%s): repair lost %d records for a damaged cache" % (trial, rel, how, lost))
        if kind in CACHES:
            for q in QUERIES:
                if q[0] == topic and envelopes(w, q[0], *q[1])[1] != answers[q]:
                    fail("corrupt %d: %s: consume -t %s %s differs after repair" % (trial, rel, q[0], " ".join(q[1])))
        if kind == "source checkpoint":
            # The rerun finds its place from the marks in the frames: nothing added twice.
            o = run([tool("produce"), "--log", w, "-t", "s", "-q", "--key", "v", "--source", "dump", src])
            if o.returncode != 0 or envelopes(w, "s")[1] != answers[("s", ())]:
                fail("corrupt %d: %s: produce --source rerun after repair: %s" % (trial, rel, o.stderr.decode()[-300:]))
    for kind, s in sorted(stats.items()):
        repaired = "" if kind == "group offsets" or kind.startswith("table") else \
            "; clean after repair %d/%d; records lost in repair %d" % (s["clean_after"], s["trials"], s["lost"])
        if "salvage_lost" in s:
            repaired += " (with --salvage %d)" % s["salvage_lost"]
        skipped = "; records skipped by readers %d" % s["skipped"] if kind in CACHES else ""
        ROWS.append(("corruption: " + kind, "%d trials" % s["trials"],
                     "detected %d/%d (file named%s); damaged records served %d%s%s"
                     % (s["detected"], s["trials"], ", with the position" if kind in BINARY else "",
                        s["served_bad"], skipped, repaired)))


# ---------------------------------------------------------------- concurrency

def concurrency(seconds, work, rng):
    import threading
    log = os.path.join(work, "conc")
    parts = 4
    run([tool("logd"), "--log", log, "topics", "create", "c", "--partitions", str(parts),
         "--segment-bytes", "256KiB", "--retention-bytes", "1MiB"], check=True)
    readers = []
    for r in range(8):
        p = subprocess.Popen([tool("consume"), "--log", log, "-t", "c", "--follow", "--value"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        readers.append(p)
    seen = [[{} for _ in range(parts)] for _ in readers]  # last seq and count per partition
    problems = []

    def read(r, p):
        last = [-1] * parts
        count = [0] * parts
        pat = re.compile(rb'^\{"p":(\d+),"s":(\d+),')
        n = 0
        for line in p.stdout:
            n += 1
            if r == 7 and n % 2000 == 0:
                time.sleep(0.2)  # the slow one: retention removes records before it reads them
            try:
                m = pat.match(line)
                part, seq = int(m.group(1)), int(m.group(2))
            except (AttributeError, ValueError):
                problems.append("reader %d: not a record: %r" % (r, line[:100]))
                continue
            if seq <= last[part]:
                problems.append("reader %d: partition %d: %d after %d" % (r, part, seq, last[part]))
            last[part] = seq
            count[part] += 1
        seen[r] = (last, count)

    threads = [threading.Thread(target=read, args=(r, p)) for r, p in enumerate(readers)]
    for t in threads:
        t.start()
    writers = [subprocess.Popen([tool("produce"), "--log", log, "-t", "c", "--partition", str(p), "-q"],
                                stdin=subprocess.PIPE, stderr=subprocess.PIPE) for p in range(parts)]
    verifies = [0, 0]
    stop = time.monotonic() + seconds

    def verify_loop():
        while time.monotonic() < stop:
            v = run([tool("logd"), "--log", log, "verify", "-t", "c"])
            verifies[0] += 1
            if v.returncode != 0:
                verifies[1] += 1
                problems.append("verify during the run: exit %d: %s" % (v.returncode, v.stdout.decode()[-300:]))

    vt = threading.Thread(target=verify_loop)
    vt.start()
    produced = [0] * parts
    pad = "y" * 80
    while time.monotonic() < stop:
        for p, w in enumerate(writers):
            chunk = "".join('{"p":%d,"s":%d,"pad":"%s"}\n' % (p, produced[p] + i, pad) for i in range(250))
            w.stdin.write(chunk.encode())
            w.stdin.flush()
            produced[p] += 250
        time.sleep(0.025)
    for w in writers:
        w.stdin.close()
        if w.wait() != 0:
            problems.append("writer exit %d: %s" % (w.returncode, w.stderr.read().decode()))
    vt.join()
    time.sleep(3)  # readers catch up with the last records
    for p in readers:
        p.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout=30)
    skipped_total = 0
    for r, p in enumerate(readers):
        p.wait()
        err = p.stderr.read().decode()
        if p.returncode not in (0, 130, 143):
            problems.append("reader %d exit %s (signal %s): %s" % (r, p.returncode, -p.returncode if p.returncode < 0 else "-", err[-300:]))
        skipped = [0] * parts
        for m in re.finditer(r"partition (\d+): (\d+) records were removed by retention", err):
            skipped[int(m.group(1))] += int(m.group(2))
        last, count = seen[r]
        for q in range(parts):
            skipped_total += skipped[q]
            if count[q] + skipped[q] != produced[q]:
                problems.append("reader %d partition %d: read %d + removed by retention %d != written %d"
                                % (r, q, count[q], skipped[q], produced[q]))
    for pr in sorted(problems, key=lambda x: x.startswith("verify"))[:20]:
        fail("concurrency: " + pr)
    segs = sum(1 for dp, _, fs in os.walk(os.path.join(log, "topics", "c")) for f in fs if f.endswith(".log"))
    ROWS.append(("concurrency", "%d s: %d writers, 8 followers (1 slow), retention 1 MiB/partition, %d verify runs"
                 % (seconds, parts, verifies[0]),
                 "%d records written; problems %d; verify failures %d; reads skipped by retention %d; %d segments left"
                 % (sum(produced), len(problems), verifies[1], skipped_total, segs)))


# ---------------------------------------------------------------- full disk

def disk(work, rng):
    if os.geteuid() != 0:
        ROWS.append(("full disk", "skipped", "needs root to mount a tmpfs"))
        return
    mnt = os.path.join(work, "tmpfs")
    os.makedirs(mnt)
    if run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", mnt]).returncode != 0:
        ROWS.append(("full disk", "skipped", "mount -t tmpfs failed"))
        return
    try:
        src = os.path.join(work, "disk.ndjson")
        dump(src, 200_000)  # about 14 MB: more than the 8 MB mount
        more = os.path.join(work, "more.ndjson")
        dump(more, 100, start=1_000_000)
        log = os.path.join(mnt, "log")
        results = []
        # A filler topic whose deletion frees space later.
        filler = os.path.join(work, "filler.ndjson")
        dump(filler, 25_000, start=2_000_000)
        run([tool("produce"), "--log", log, "-t", "filler", "-q", filler], check=True)
        for what in ("produce", "store"):
            if what == "produce":
                o = run([tool("produce"), "--log", log, "-t", "t", "--key", "v", "-q", src])
            else:
                # Fed in pieces with pauses, so store commits batches before the disk fills.
                p = subprocess.Popen([tool("store"), "--log", log, "--table", "tb", "--key", "v", "-q"],
                                     stdin=subprocess.PIPE, stderr=subprocess.PIPE)
                lines = open(src, "rb").readlines()
                try:
                    for k in range(0, len(lines), 5000):
                        p.stdin.write(b"".join(lines[k:k + 5000]))
                        p.stdin.flush()
                        time.sleep(0.05)
                    p.stdin.close()
                except BrokenPipeError:
                    pass
                o = subprocess.CompletedProcess(p.args, p.wait(), b"", p.stderr.read())
            err = o.stderr.decode(errors="replace")
            if o.returncode != 1 or "No space left" not in err and "space" not in err:
                fail("disk %s: exit %d, message %r" % (what, o.returncode, err[-300:]))
            results.append("%s exit %d" % (what, o.returncode))
            if what == "produce":
                got, e = values(log, "t")
                if got is None:
                    fail("disk: consume after a full disk: " + e)
                    got = []
                elif got != list(range(len(got))):
                    # One partition: what is readable is exactly the first records, whole.
                    fail("disk: the records after a full disk are not a prefix of the input")
                v = run([tool("logd"), "--log", log, "verify", "-t", "t"])
                if v.returncode != 0:
                    fail("disk: verify after a full disk: " + v.stdout.decode()[-300:])
                results.append("%d records readable" % len(got))
                # Space again: the same topic takes more.
                run([tool("logd"), "--log", log, "topics", "delete", "filler"], check=True)
                o2 = run([tool("produce"), "--log", log, "-t", "t", "--key", "v", "-q", more])
                after, e = values(log, "t")
                if o2.returncode != 0 or after != got + list(range(1_000_000, 1_000_100)):
                    fail("disk: produce to the same topic after freeing space: %s %s" % (o2.stderr.decode(), e))
                elif run([tool("logd"), "--log", log, "verify", "-t", "t"]).returncode != 0:
                    fail("disk: verify after appending again")
            else:
                x = run([tool("store"), "--log", log, "stats", "tb"])
                if x.returncode != 0:
                    fail("disk: store stats after a full disk: " + (x.stdout + x.stderr).decode()[-300:])
                inputs = set(l.rstrip(b"\n") for l in open(src, "rb"))
                rows = run([tool("store"), "--log", log, "export", "tb"]).stdout.splitlines()
                partial = [r for r in rows if json.dumps({k: v for k, v in json.loads(r).items() if k != "key"},
                                                        separators=(",", ":")).encode() not in inputs]
                if partial:
                    fail("disk: store export shows %d rows that are not input records" % len(partial))
                results.append("table checks (%d whole rows)" % len(rows))
                # Space again: the same table takes more.
                run([tool("logd"), "--log", log, "topics", "delete", "t"], check=True)
                o2 = run([tool("store"), "--log", log, "--table", "tb", "--key", "v", "-q"], input=open(more, "rb").read())
                g = run([tool("store"), "--log", log, "get", "tb", "k%d" % (1_000_099 % 64)])
                if o2.returncode != 0 or b'"i":1000099' not in g.stdout:
                    fail("disk: store to the same table after freeing space: " + o2.stderr.decode())
                if run([tool("store"), "--log", log, "stats", "tb"]).returncode != 0:
                    fail("disk: store stats after appending again")
        ROWS.append(("full disk (8 MB tmpfs)", "produce and store of 14 MB",
                     "; ".join(results) + "; the same topic and table take appends again once space is freed"))
    finally:
        run(["umount", mnt])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", action="store_true", help="the CI version: fewer kills and trials")
    ap.add_argument("--only", default="crash,corrupt,disk,concurrency")
    ap.add_argument("--bin", help="directory of the release binaries")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--kills", type=int, help="kills per fsync mode (default 200, short 10)")
    ap.add_argument("--trials", type=int, help="corruption trials (default 1000, short 150)")
    ap.add_argument("--rows", help="a file of more table rows (other checks' results) to print")
    a = ap.parse_args()
    global BIN
    if a.bin:
        BIN = a.bin
    rng = random.Random(a.seed)
    only = set(a.only.split(","))
    work = tempfile.mkdtemp(prefix="kappa-reliability-")
    t0 = time.monotonic()
    try:
        if "crash" in only:
            crash(a.kills or (10 if a.short else 200), work, rng)
        if "corrupt" in only:
            corrupt(a.trials or (150 if a.short else 1000), work, rng)
        if "disk" in only:
            disk(work, rng)
        if "concurrency" in only:
            concurrency(15 if a.short else 60, work, rng)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| check | run | result |")
    print("| --- | --- | --- |")
    for r in ROWS:
        print("| %s | %s | %s |" % r)
    if a.rows and os.path.exists(a.rows):
        for line in open(a.rows):
            print(line.rstrip("\n"))
            if "FAILED" in line:
                FAILURES.append(line.strip())
    print("\nseed %d, %.0f s, %d failures" % (a.seed, time.monotonic() - t0, len(FAILURES)))
    for f in FAILURES[:50]:
        print("FAIL " + f)
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
