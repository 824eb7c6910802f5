#!/usr/bin/env bash
# The device tool sends the working tree plus carried paths, 64 MiB at most.
# The CPU runs' resumable states (train_runs/*/state.pt, ~27 MB) and the
# checkpoints a GPU session does not start from would push it over, so move
# them aside before the `run` calls and back afterwards:
#   scripts/gpu_stash.sh out [KEEP...]   # KEEP: rate points to leave in codec/weights
#   scripts/gpu_stash.sh back
# e.g. `scripts/gpu_stash.sh out semarc-h05b semarc-h10b`. Prints the size that
# will travel (tracked and untracked-not-ignored files plus .dev and .whl).
set -euo pipefail
S=${STASH:-/tmp/semarc-stash}
case "${1:-}" in
  out)
    shift
    mkdir -p "$S/train_runs" "$S/weights"
    for f in train_runs/*/state.pt; do
      [ -f "$f" ] || continue
      d=$(basename "$(dirname "$f")"); mkdir -p "$S/train_runs/$d"; mv "$f" "$S/train_runs/$d/"
    done
    for f in codec/weights/*.pt; do
      n=$(basename "$f" .pt); keep=0
      for k in "$@"; do [ "$k" = "$n" ] && keep=1; done
      [ $keep = 1 ] || mv "$f" "$S/weights/"
    done
    ;;
  back)
    for f in "$S"/train_runs/*/state.pt; do
      [ -f "$f" ] || continue
      d=$(basename "$(dirname "$f")"); mv "$f" "train_runs/$d/"
    done
    for f in "$S"/weights/*.pt; do [ -f "$f" ] && mv "$f" codec/weights/; done
    ;;
  *) echo "usage: $0 out [KEEP...] | back" >&2; exit 2 ;;
esac
python3 - <<'PY'
import os, subprocess
files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], capture_output=True, text=True).stdout.split("\n")
size = sum(os.path.getsize(f) for f in files if f and os.path.isfile(f))
for d in (".dev", ".whl"):
    for root, _, names in os.walk(d):
        size += sum(os.path.getsize(os.path.join(root, n)) for n in names)
print(f"travels: {size / 2**20:.1f} MiB (limit 64)")
PY
