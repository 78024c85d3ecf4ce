import csv, sys, collections
rows = list(csv.DictReader(open(sys.argv[1])))
by = collections.defaultdict(dict)
for r in rows:
    by[r["rule"]][r["seed_index"]] = r
seeds = sorted(by["argmax"])
for m in ["pq", "pq_th", "pq_st", "miou", "map", "acc_small", "acc_medium", "acc_large"]:
    line = []
    for rule in ["interior", "centroid", "top3", "random"]:
        d = [float(by[rule][s][m]) - float(by["argmax"][s][m]) for s in seeds if by[rule][s][m] not in ("", "nan")]
        allb = all(x > 0 for x in d) and len(d) == len(seeds)
        line.append(f"{rule}: " + "/".join(f"{x:+.1f}" for x in d) + (" ALL>" if allb else ""))
    print(m, " | ".join(line))
