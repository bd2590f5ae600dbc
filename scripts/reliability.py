#!/usr/bin/env python3
"""The reliability battery of docs/DURABILITY.md: runs the real binaries and prints a table.

    scripts/reliability.py [--short] [--only crash,corrupt,disk] [--bin DIR] [--seed N]

crash    SIGKILLs `produce --source` at random moments (--fsync batch and always); after each
         kill: `logd recover`, `logd verify`, and every acknowledged record present once, in
         order. Reports kills, acknowledged, lost, duplicates, recovery speed.
corrupt  flips bits or zeroes ranges in segments, indexes, time indexes, topic.json, group
         offsets and table files; checks that `logd verify` names the file, that readers
         serve only intact records, and that `logd recover`/`logd repair` make it clean.
disk     fills a small tmpfs (needs root) during `produce` and `store`: exit 1, a clear
         message, nothing partial visible, and appends work again once space is freed.
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
                t0 = time.monotonic()
                r = run([tool("logd"), "--log", log, "recover", "-t", topic])
                recover_s += time.monotonic() - t0
                if r.returncode != 0:
                    fail("crash %s: logd recover: %s" % (mode, r.stderr.decode()))
                v = run([tool("logd"), "--log", log, "verify", "-t", topic])
                m = re.search(rb"verified \d+ segments, \d+ frames, \d+ records, ", v.stdout)
                if v.returncode != 0:
                    fail("crash %s: verify after kill %d: %s" % (mode, done_kills, v.stdout.decode()[-500:]))
                scanned += sum(os.path.getsize(os.path.join(dp, f))
                               for dp, _, fs in os.walk(os.path.join(log, "topics", topic))
                               for f in fs if f.endswith(".log"))
                acked = 0
                if os.path.exists(acks):
                    for line in open(acks, errors="replace"):
                        try:
                            acked = max(acked, json.loads(line)["lines"])
                        except (ValueError, KeyError):
                            pass  # a line cut by the kill is no acknowledgement
                got, err = values(log, topic)
                if got is None:
                    fail("crash %s: consume: %s" % (mode, err))
                    return
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
        ROWS.append(("crash loop, --fsync " + mode,
                     "%d kills over %d inputs of %d lines" % (done_kills, rounds, n),
                     "acknowledged %d; lost %d; duplicates %d; recovery %.2f s per GB scanned (%.1f MB in %.2f s)"
                     % (acked_total, lost, dups, 1 / gbps if gbps else 0, scanned / 1e6, recover_s)))


# ---------------------------------------------------------------- corruption trials

def build_pristine(base):
    os.makedirs(base)
    log = os.path.join(base, "log")
    src = os.path.join(base, "in.ndjson")
    dump(src, 20_000)
    run([tool("logd"), "--log", log, "topics", "create", "t", "--partitions", "2",
         "--segment-bytes", "64KiB"], check=True)
    run([tool("produce"), "--log", log, "-t", "t", "-q", "--key", "v", src], check=True)
    run([tool("consume"), "--log", log, "-t", "t", "--group", "g", "--max", "5000", "-q"], check=True)
    env = run([tool("consume"), "--log", log, "-t", "t"], check=True).stdout
    run([tool("store"), "--log", log, "--table", "tb", "--key", "v", "-q"], input=run(
        [tool("consume"), "--log", log, "-t", "t", "--value"], check=True).stdout, check=True)
    table = run([tool("store"), "--log", log, "export", "tb"], check=True).stdout
    records = {}
    for line in env.splitlines():
        e = json.loads(line)
        records[(e["partition"], e["offset"])] = line
    return log, records, set(table.splitlines())


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
                kind = "segment"
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


def corrupt(trials, work, rng):
    pristine, records, table = build_pristine(os.path.join(work, "pristine"))
    # One file of each kind is kept readable for every trial's copy.
    kinds = {}
    for kind, _ in targets(pristine):
        kinds.setdefault(kind, 0)
    stats = {}
    values_all = {json.dumps(json.loads(l)["value"], separators=(",", ":")).encode() for l in records.values()}
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
        s = stats.setdefault(kind, {"trials": 0, "detected": 0, "served_bad": 0, "clean_after": 0, "lost": 0})
        s["trials"] += 1
        rel = os.path.relpath(path, w)
        v = run([tool("logd"), "--log", w, "verify"])
        out = v.stdout.decode(errors="replace")
        if v.returncode == 1 and rel.split("/")[-1] in out:
            s["detected"] += 1
        else:
            fail("corrupt %d: %s (%s) not reported by verify (exit %d): %s" % (trial, rel, how, v.returncode, out[-300:]))
        # Readers: every record served is one of the original ones, unchanged.
        c = run([tool("consume"), "--log", w, "-t", "t"])
        for line in c.stdout.splitlines():
            try:
                e = json.loads(line)
                ok = records.get((e["partition"], e["offset"])) == line
            except (ValueError, KeyError):
                ok = False
            if not ok:
                s["served_bad"] += 1
                fail("corrupt %d: %s (%s): consume served a damaged record: %r" % (trial, rel, how, line[:200]))
                break
        if c.returncode not in (0, 1, 2):
            fail("corrupt %d: consume exit %d: %s" % (trial, c.returncode, c.stderr.decode()[-300:]))
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
            if r2.returncode != 0 or run([tool("logd"), "--log", w2, "verify", "-t", "t"]).returncode != 0:
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
        v2 = run([tool("logd"), "--log", w, "verify", "-t", "t"])
        if v2.returncode == 0:
            s["clean_after"] += 1
        else:
            fail("corrupt %d: %s (%s): verify after repair: %s" % (trial, rel, how, v2.stdout.decode()[-400:]))
        if kind in ("index", "time index", "recovery checkpoint", "topic.json") and lost:
            fail("corrupt %d: %s (%s): repair lost %d records for a damaged cache" % (trial, rel, how, lost))
        if kind in ("index", "time index", "recovery checkpoint"):
            got = run([tool("consume"), "--log", w, "-t", "t"]).stdout.splitlines()
            if len(got) != len(records):
                fail("corrupt %d: %s: %d of %d records after the index was rebuilt" % (trial, rel, len(got), len(records)))
    for kind, s in sorted(stats.items()):
        repaired = "" if kind == "group offsets" or kind.startswith("table") else \
            "; clean after repair %d/%d; records lost in repair %d" % (s["clean_after"], s["trials"], s["lost"])
        if "salvage_lost" in s:
            repaired += " (with --salvage %d)" % s["salvage_lost"]
        ROWS.append(("corruption: " + kind, "%d trials" % s["trials"],
                     "detected %d/%d; damaged records served %d%s"
                     % (s["detected"], s["trials"], s["served_bad"], repaired)))


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
        log = os.path.join(mnt, "log")
        results = []
        for what in ("produce", "store"):
            if what == "produce":
                o = run([tool("produce"), "--log", log, "-t", "t", "--key", "v", "-q", src])
            else:
                o = run([tool("store"), "--log", log, "--table", "tb", "--key", "v", "-q"], input=open(src, "rb").read())
            err = o.stderr.decode(errors="replace")
            if o.returncode != 1 or "No space left" not in err and "space" not in err:
                fail("disk %s: exit %d, message %r" % (what, o.returncode, err[-300:]))
            results.append("%s exit %d" % (what, o.returncode))
            if what == "produce":
                got, e = values(log, "t")
                if got is None:
                    fail("disk: consume after a full disk: " + e)
                    got = []
                else:
                    ids = sorted(got)
                    if ids != list(range(len(ids))) and sorted(set(ids)) != ids:
                        fail("disk: records after a full disk are not a clean prefix per key")
                v = run([tool("logd"), "--log", log, "verify", "-t", "t"])
                if v.returncode != 0:
                    fail("disk: verify after a full disk: " + v.stdout.decode()[-300:])
                results.append("%d records readable" % len(got))
            else:
                x = run([tool("store"), "--log", log, "stats", "tb"])
                if x.returncode != 0:
                    fail("disk: store stats after a full disk: " + (x.stdout + x.stderr).decode()[-300:])
                results.append("table checks")
            # Free space: drop the other one's data and append again.
            if what == "produce":
                run([tool("logd"), "--log", log, "topics", "delete", "t"])
                o2 = run([tool("produce"), "--log", log, "-t", "t2", "-q"], input=b'{"a":1}\n')
                if o2.returncode != 0 or run([tool("consume"), "--log", log, "-t", "t2", "--value"]).stdout != b'{"a":1}\n':
                    fail("disk: produce after freeing space: " + o2.stderr.decode())
                run([tool("logd"), "--log", log, "topics", "delete", "t2"])
            else:
                run([tool("store"), "--log", log, "drop", "tb@v1", "--force"])
                shutil.rmtree(os.path.join(log, "tables", "tb"), ignore_errors=True)
                o2 = run([tool("store"), "--log", log, "--table", "tb2", "--key", "v", "-q"], input=b'{"v":"a"}\n')
                if o2.returncode != 0:
                    fail("disk: store after freeing space: " + o2.stderr.decode())
        ROWS.append(("full disk (8 MB tmpfs)", "produce and store of 14 MB", "; ".join(results) + "; appends work after freeing"))
    finally:
        run(["umount", mnt])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", action="store_true", help="the CI version: fewer kills and trials")
    ap.add_argument("--only", default="crash,corrupt,disk,concurrency")
    ap.add_argument("--bin", help="directory of the release binaries")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--kills", type=int, help="kills per fsync mode (default 100, short 10)")
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
            crash(a.kills or (10 if a.short else 100), work, rng)
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
