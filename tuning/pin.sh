# Sourced by the tuning scripts: `taskset -c LIST cmd args...` where util-linux is missing
# (minimal images, the lent device machine), done with Python's sched_setaffinity instead.
# PY_TASKSET=1 forces the fallback. In a background job (`taskset ... &`) the command
# replaces the job's subshell, so `$!` is the command's own PID, as with the real taskset;
# in the foreground it runs as a child, so the calling script goes on.
if ! command -v taskset >/dev/null || [ -n "${PY_TASKSET:-}" ]; then
  taskset() {
    shift
    local pin='import os, sys
cpus = set()
for part in sys.argv[1].split(","):
    first, _, last = part.partition("-")
    cpus.update(range(int(first), int(last or first) + 1))
os.sched_setaffinity(0, cpus)
os.execvp(sys.argv[2], sys.argv[2:])'
    if [ "$BASHPID" != "$$" ]; then exec python3 -c "$pin" "$@"; fi
    python3 -c "$pin" "$@"
  }
fi
