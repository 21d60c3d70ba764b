#!/usr/bin/env python3
"""table.py: turn bench/run.sh's rounds (TSV) into the markdown table.

Input lines: set, contender, round, rps, p50 ms, p99 ms, errors; a second
file, if given, holds the paced rounds (same offered load for everyone),
whose p99 is the one the latency target is checked on.
Per set and contender: rps median/min/max over the rounds, the median p50
and p99, and the ratios to nginx with upstream keepalive (the reference).
Then the agent's targets from the issue, met or missed.
"""
import statistics
import sys

NAMES = {
    "direct": "direct (one backend, no proxy)",
    "nginx": "nginx, upstream keepalive",
    "nginx-classic": "nginx, classic config (no keepalive)",
    "haproxy": "HAProxy",
    "meshlb": "meshlb agent, defaults (an event loop per core)",
    "meshlb-1loop": "meshlb agent, one event loop",
    "meshlb-unsampled": "meshlb agent, tracing configured, unsampled",
    "meshlb-sampled": "meshlb agent, tracing on, every request sampled",
}
SETS = {"fast": "5 fast backends", "tornado": "5 Tornado"}
ORDER = list(NAMES)


def read(path):
    """Rounds by (set, contender), and their medians."""
    rows = {}
    with open(path) as f:
        for line in f:
            s, c, _, rps, p50, p99, err = line.rstrip("\n").split("\t")
            r = rows.setdefault((s, c), {"rps": [], "p50": [], "p99": [], "err": 0})
            r["rps"].append(float(rps))
            r["p50"].append(float(p50))
            r["p99"].append(float(p99))
            r["err"] += int(err)
    med = {k: {m: statistics.median(v[m]) for m in ("rps", "p50", "p99")} for k, v in rows.items()}
    return rows, med


def main(path, paced_path=None):
    rows, med = read(path)
    prows, pmed = read(paced_path) if paced_path else ({}, {})

    print("| backends | contender | rps median | rps min | rps max | × nginx | p50 ms | p99 ms | p99 × nginx | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    sets = [s for s in SETS if any(k[0] == s for k in rows)]
    for s in sets:
        ref = med.get((s, "nginx"))
        for c in ORDER:
            if (s, c) not in rows:
                continue
            r, m = rows[(s, c)], med[(s, c)]
            ratio = "%.2f" % (m["rps"] / ref["rps"]) if ref else "–"
            p99r = "%.2f" % (m["p99"] / ref["p99"]) if ref and ref["p99"] > 0 else "–"
            print("| %s | %s | %.0f | %.0f | %.0f | %s | %.2f | %.2f | %s | %d |" % (
                SETS[s], NAMES[c], m["rps"], min(r["rps"]), max(r["rps"]), ratio,
                m["p50"], m["p99"], p99r, r["err"]))
    print()
    print("rps: requests per second over each round; p50/p99: wrk's latency percentiles, median over the rounds;")
    print("× nginx: median rps divided by nginx-with-keepalive's median on the same backends; errors: non-2xx")
    print("responses plus socket errors, summed over the rounds.")

    if prows:
        print()
        print("Latency at the same load (paced rounds: every contender offered about the same request rate, a")
        print("fraction of nginx's maximum above; wrk's connections each wait a fixed delay after every answer):")
        print()
        print("| backends | contender | rps median | p50 ms | p99 ms | p99 × nginx | errors |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for s in sets:
            ref = pmed.get((s, "nginx"))
            for c in ORDER:
                if (s, c) not in prows:
                    continue
                m = pmed[(s, c)]
                p99r = "%.2f" % (m["p99"] / ref["p99"]) if ref and ref["p99"] > 0 else "–"
                print("| %s | %s | %.0f | %.2f | %.2f | %s | %d |" % (
                    SETS[s], NAMES[c], m["rps"], m["p50"], m["p99"], p99r, prows[(s, c)]["err"]))

    targets = []
    for s, want in (("fast", 1.1), ("tornado", 1.05)):
        n, h = med.get((s, "nginx")), med.get((s, "haproxy"))
        best = max((x for x in (n, h) if x), key=lambda x: x["rps"], default=None)
        c = "meshlb-1loop" if s == "fast" else "meshlb"
        a = med.get((s, c))
        if a and best:
            got = a["rps"] / best["rps"]
            targets.append("%s on %s ≥ %.2f × the faster of nginx and HAProxy: %.2f — %s" % (
                NAMES[c], SETS[s], want, got, "met" if got >= want else "MISSED"))
        d, one = med.get((s, "meshlb")), med.get((s, "meshlb-1loop"))
        if s == "fast" and d and one:
            got = d["rps"] / one["rps"]
            targets.append("defaults on %s ≥ 0.95 × one loop: %.2f — %s" % (SETS[s], got, "met" if got >= 0.95 else "MISSED"))
        for c in ("meshlb", "meshlb-1loop"):
            pa, pn = pmed.get((s, c)), pmed.get((s, "nginx"))
            if pa and pn:
                got = pa["p99"] / pn["p99"]
                targets.append("%s: p99 on %s at the same load ≤ nginx's: %.2f × — %s" % (
                    NAMES[c], SETS[s], got, "met" if got <= 1.0 else "MISSED"))
    for s in sets:
        a, u, sm = med.get((s, "meshlb")), med.get((s, "meshlb-unsampled")), med.get((s, "meshlb-sampled"))
        if a and u:
            got = u["rps"] / a["rps"]
            targets.append("tracing configured but unsampled on %s, rps vs tracing off: %.3f — %s (≥ 0.95)" % (
                SETS[s], got, "met" if got >= 0.95 else "MISSED"))
        if a and sm:
            targets.append("every request sampled on %s, rps vs tracing off: %.3f" % (SETS[s], sm["rps"] / a["rps"]))
    if targets:
        print()
        print("Targets for the agent (issue 13):")
        print()
        for t in targets:
            print("- " + t)


if __name__ == "__main__":
    main(*sys.argv[1:3])
