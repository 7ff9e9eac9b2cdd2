"""Runs a command while sampling nvidia-smi memory.used every 20 ms; prints the command's stdout
lines and then one JSON line {"peak_gpu_memory_gib": ...} (device-wide, so run nothing else).

    python3 tools/bench/with_peak_memory.py -- target/gpu/release/lora-bench --device cuda ...
"""

import json
import subprocess
import sys
import threading


def main():
    command = sys.argv[sys.argv.index("--") + 1:]
    peak = {"mib": 0}
    poller = subprocess.Popen(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-lms", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def read():
        for line in poller.stdout:
            try:
                peak["mib"] = max(peak["mib"], int(line.split()[0]))
            except (ValueError, IndexError):
                pass

    threading.Thread(target=read, daemon=True).start()
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    poller.terminate()
    sys.stdout.write(result.stdout)
    print(json.dumps({"peak_gpu_memory_gib": peak["mib"] / 1024, "exit": result.returncode}))
    sys.exit(result.returncode)


if __name__ == "__main__":
    main()
