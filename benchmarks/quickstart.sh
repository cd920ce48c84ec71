#!/usr/bin/env bash
# Runs one README Quickstart line as a new user would, and says what it cost and what it built:
#
#   bash benchmarks/quickstart.sh 1 [WORKDIR]   # the main job
#   bash benchmarks/quickstart.sh 2 [WORKDIR]   # the tests
#
# A fresh virtual environment with nothing installed and a fresh clone of this repository; the
# line runs exactly as written (one `bash -c`). Then, from the clone, `python -m fna_ext.info
# --json` must report the extension built at install time (how: installed), with kernels for the
# CPU and, when torch has CUDA and a toolkit was found, for CUDA, no op missing on any device it
# was built for (`fna_ext.info --check`), and no compile on first use anywhere in the line's
# output. .ci/run calls this.
set -euo pipefail
line_number=${1:?usage: quickstart.sh 1|2 [WORKDIR]}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${2:-$(mktemp -d)}
mkdir -p "$work"

# Lines of the first ```bash block under "## Quickstart", comments and blank lines left out.
mapfile -t lines < <(awk '/^## Quickstart/ {q = 1; next}
                          q && /^## / {exit}
                          q && /^```/ {if (fence) exit; fence = 1; next}
                          q && fence && NF && $1 !~ /^#/' "$repo/README.md")
if [ "${#lines[@]}" -ne 2 ]; then
  echo "quickstart: expected exactly two Quickstart command lines in README.md, found ${#lines[@]}" >&2
  exit 1
fi
line=${lines[$((line_number - 1))]}
venv="$work/venv$line_number" clone="$work/clone$line_number" log="$work/line$line_number.log"
rm -rf "$venv" "$clone"
python3 -m venv "$venv"
git clone -q "$repo" "$clone"
echo "=== Quickstart line $line_number: $line"
start=$(date +%s)
# shellcheck disable=SC1091
(source "$venv/bin/activate" && cd "$clone" && bash -euo pipefail -c "$line") 2>&1 | tee "$log"
seconds=$(($(date +%s) - start))

if grep -q "compiling the C++ ops once" "$log"; then
  echo "quickstart: line $line_number compiled the extension a second time, on first use" >&2
  exit 1
fi
(cd "$clone" && "$venv/bin/python" -m fna_ext.info --check)
echo "quickstart line $line_number: $seconds s ($((seconds / 60)) min $((seconds % 60)) s) from a fresh venv and clone"
