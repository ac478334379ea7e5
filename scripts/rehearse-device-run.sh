#!/usr/bin/env bash
# Rehearse `scripts/device-record.sh run` here, on the CPU, the way the GPU machine will run it:
#
#   bash scripts/rehearse-device-run.sh      # about 5 minutes on two cores (plus 1 minute the first time: the venv)
#
# It makes (once) a Python 3.12 venv, $REHEARSE_VENV (/tmp/gpu312), that holds only what the GPU machine has: torch
# 2.11.0, torchvision 0.26.0, numpy 2.5.2, matplotlib (3.10.9 here, so that the carried 3.11.2 must win), pillow,
# attrs, and their dependencies; no torchsummary, torchinfo or nbformat. It runs `prepare`, clones this repository
# into /tmp/rehearse (the working tree's scripts/device-record.sh and scripts/device-wheels.txt laid over the clone),
# copies .device in, and runs `run` there with that venv's python3 first on PATH, DEVICE=cpu, LESSON_DATA unset (so
# the carried MNIST is used) and OUT=/tmp/rehearse-out:
#   A  the whole lesson, as on the GPU machine (RUN_DEADLINE $REHEARSE_DEADLINE, default 600 s: a CPU is slower);
#   B  in a fresh clone, with snippets/zz_fail.py (raises), zz_hang.py and zz_sleep.py (sleep for an hour) added,
#      run on `zz_fail mnist_mlp cifar_mlp zz_hang zz_sleep image_tensors` with SNIPPET_TIMEOUT=15, RUN_DEADLINE=45:
#      the good ones after the failure are still recorded, each sleeper is stopped, image_tensors would start less
#      than 10 s before the deadline and is skipped, and the tarball comes back (OUT=/tmp/rehearse-out-b).
# Then it checks what came back, and prints the timings. Exit status 0 when every check passed.
# shellcheck disable=SC2317  # the helpers below are called through check()
cd "$(dirname "$0")/.." || exit 2
MAIN=$PWD
VENV=${REHEARSE_VENV:-/tmp/gpu312}
PY312=${PY312:-$HOME/.pyenv/versions/3.12.1/bin/python}
FAILURES=0

step() { printf '\n===== %s   [%d s]\n' "$*" "$SECONDS"; }
check() {  # check "what" command...
  local what=$1; shift
  if "$@"; then echo "  ok    $what"; else echo "  FAIL  $what"; FAILURES=$((FAILURES + 1)); fi
}

step "venv $VENV (what the GPU machine has)"
if [[ ! -x $VENV/bin/python3 ]]; then
  "$PY312" -m venv "$VENV" && "$VENV/bin/pip" install -q torch==2.11.0 torchvision==0.26.0 numpy==2.5.2 \
    matplotlib==3.10.9 pillow attrs 2>&1 | grep -v "is ignored: it is neither" || exit 1
fi
"$VENV/bin/python3" - <<'PY' || exit 1
import sys
from importlib import metadata
print("python3", sys.version.split()[0], "with", ", ".join(
    f"{n} {metadata.version(n)}" for n in ("torch", "torchvision", "numpy", "matplotlib", "pillow", "attrs")))
lacking = [n for n in ("torchsummary", "torchinfo", "nbformat", "jsonschema", "fastjsonschema", "traitlets")
           if not __import__("importlib.util").util.find_spec(n)]
print("lacks, as the GPU machine does:", ", ".join(lacking))
sys.exit(len(lacking) != 6)
PY

step "prepare (here)"
bash scripts/device-record.sh prepare 2>&1 | grep -v "is ignored: it is neither" || exit 1

fresh_clone() {  # fresh_clone DIR: the committed project, this working tree's device scripts, .device
  rm -rf "$1" && git clone -q "$MAIN" "$1" || exit 1
  local file
  for file in scripts/device-record.sh scripts/device-wheels.txt; do
    cmp -s "$file" "$1/$file" || { cp "$file" "$1/$file"; echo "  (laid over the clone: $file, not committed yet)"; }
  done
  cp -r .device "$1/.device"
}

device_run() {  # device_run CLONE OUT [env...] -- [names...]: run as on the GPU machine, return its exit status
  local clone=$1 out=$2; shift 2
  local settings=()
  while (($#)) && [[ $1 != -- ]]; do settings+=("$1"); shift; done
  shift
  rm -rf "$out" /tmp/rehearse-site /tmp/rehearse-data && mkdir -p "$out"
  (cd "$clone" && env -u LESSON_DATA -u PYTHONPATH PATH="$VENV/bin:$PATH" OUT="$out" DEVICE=cpu \
     SITE_DIR=/tmp/rehearse-site DATA_DIR=/tmp/rehearse-data "${settings[@]}" bash scripts/device-record.sh run "$@")
}

stamp_of() {  # stamp_of TARBALL NAME FIELD
  tar -xzOf "$1" "docs/outputs/cpu/$2.json" | "$VENV/bin/python3" -c \
    "import json, sys; print(json.load(sys.stdin)['environment']['$3'])"
}
no_scratch() { ! tar -tzf "$1" | grep -q '/\.[^/]*/'; }
out_small() { (($(find "$1" -mindepth 1 | wc -l) <= 8)); }
no_orphans() { ! pgrep -f "$1" > /dev/null; }

step "A: the whole lesson, in a fresh clone /tmp/rehearse"
fresh_clone /tmp/rehearse
a_started=$SECONDS
device_run /tmp/rehearse /tmp/rehearse-out RUN_DEADLINE="${REHEARSE_DEADLINE:-600}" --
a_rc=$? a_seconds=$((SECONDS - a_started))
echo "A: run exited $a_rc after $a_seconds s"
ls -l /tmp/rehearse-out
snippets=$(find /tmp/rehearse/snippets -maxdepth 1 -name '[!_]*.py' | wc -l)
tarball=/tmp/rehearse-out/recordings.tar.gz
recorded=$(tar -tzf "$tarball" | grep -c '^docs/outputs/cpu/[^/]*\.json$')
check "run exited 0" test "$a_rc" -eq 0
check "all $snippets snippets ok in summary.txt" \
  test "$(grep -cE '^[a-z_]+ +ok ' /tmp/rehearse-out/summary.txt)" -eq "$snippets"
check "the tarball holds $snippets CPU recordings ($recorded)" test "$recorded" -eq "$snippets"
check "the tarball holds $snippets notebooks" \
  test "$(tar -tzf "$tarball" | grep -c '^docs/notebooks/.*\.ipynb$')" -eq "$snippets"
check "no scratch folder packed" no_scratch "$tarball"
check "at most 8 files in OUT" out_small /tmp/rehearse-out
check "recorded with the carried matplotlib 3.11.2 (the venv has 3.10.9)" \
  test "$(stamp_of "$tarball" mnist_samples matplotlib)" = 3.11.2
check "recorded with the carried torchinfo 1.8.0" test "$(stamp_of "$tarball" mnist_mlp torchinfo)" = 1.8.0
check "the carried MNIST was used" grep -q "MNIST: unpacked into /tmp/rehearse-data, sha256 verified" \
  /tmp/rehearse-out/preflight.txt

step "B: a failing snippet, two hanging ones and the deadline, in a fresh clone /tmp/rehearse-b"
fresh_clone /tmp/rehearse-b
printf '# %%%% boom\nraise RuntimeError("a planned failure")\n' > /tmp/rehearse-b/snippets/zz_fail.py
for name in zz_hang zz_sleep; do
  printf '# %%%% forever\nimport time\n\ntime.sleep(3600)\n' > "/tmp/rehearse-b/snippets/$name.py"
done
b_started=$SECONDS b_since=$(date -u +%FT%T)
device_run /tmp/rehearse-b /tmp/rehearse-out-b SNIPPET_TIMEOUT=15 RUN_DEADLINE=45 -- \
  zz_fail mnist_mlp cifar_mlp zz_hang zz_sleep image_tensors
b_rc=$? b_seconds=$((SECONDS - b_started))
echo "B: run exited $b_rc after $b_seconds s"
ls -l /tmp/rehearse-out-b
tarball=/tmp/rehearse-out-b/recordings.tar.gz
status_of() { awk -v n="$1" '$1 == n { print $2; exit }' /tmp/rehearse-out-b/summary.txt; }
fresh() { [[ $(stamp_of "$tarball" "$1" recorded_at) > $b_since ]]; }
check "run exited 1" test "$b_rc" -eq 1
check "zz_fail is FAILED" test "$(status_of zz_fail)" = FAILED
check "zz_hang is TIMEOUT" test "$(status_of zz_hang)" = TIMEOUT
check "mnist_mlp is ok, and freshly recorded in the tarball" test "$(status_of mnist_mlp)" = ok
check "  mnist_mlp.json recorded in this run" fresh mnist_mlp
check "cifar_mlp is ok, and freshly recorded in the tarball" test "$(status_of cifar_mlp)" = ok
check "  cifar_mlp.json recorded in this run" fresh cifar_mlp
check "zz_sleep is TIMEOUT or skipped" grep -qE '^zz_sleep +(TIMEOUT|skipped)' /tmp/rehearse-out-b/summary.txt
check "image_tensors is skipped: the deadline was near" test "$(status_of image_tensors)" = skipped
check "no zz_fail recording in the tarball" bash -c "! tar -tzf $tarball | grep -q zz_fail.json"
check "no scratch folder packed or left" bash -c "! tar -tzf $tarball | grep -q '/\.[^/]*/' && \
  ! find /tmp/rehearse-b/docs/outputs -mindepth 2 -maxdepth 2 -name '.*' | grep -q ."
check "no snippet process left running" no_orphans "/tmp/rehearse-b/snippets/zz_(hang|sleep).py"
check "at most 8 files in OUT" out_small /tmp/rehearse-out-b

step "done"
echo "A (whole lesson): ${a_seconds} s; B (failure, hangs, deadline): ${b_seconds} s; rehearsal: ${SECONDS} s;" \
     "$FAILURES check(s) failed"
exit $((FAILURES > 0))
