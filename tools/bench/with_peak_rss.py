#!/usr/bin/env python3
"""Runs a command and reports its process tree's peak resident memory (the sum over the tree,
sampled from /proc every 50 ms: worker processes count) and wall time, as one JSON line on
stderr after the command's own output. `python3 tools/bench/with_peak_rss.py -- cmd args...`"""
import json
import os
import subprocess
import sys
import time


def tree_rss(root):
    children = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(pid))
        except (OSError, IndexError, ValueError):
            pass
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/statm") as statm:
                total += int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
    return total


def main():
    command = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
    if not command:
        raise SystemExit(__doc__)
    started = time.time()
    process = subprocess.Popen(command)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss(process.pid))
        time.sleep(0.05)
    print(json.dumps({"peak_rss_gib": peak / 2**30, "wall_s": time.time() - started,
                      "exit": process.returncode}), file=sys.stderr)
    sys.exit(process.returncode)


if __name__ == "__main__":
    main()
