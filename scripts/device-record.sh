#!/usr/bin/env bash
# Record the whole lesson on a borrowed GPU machine in one call, and bring the recordings back as one tarball.
#
#   bash scripts/device-record.sh prepare       # here: fill .device/ (git-ignored), print what will travel
#   bash scripts/device-record.sh run [NAME…]   # there: cwd = the repository, $OUT set, .device carried
#
# The GPU machine (an NVIDIA H200; python3 3.12 with torch 2.11.0+cu130, torchvision 0.26.0, numpy 2.5.2 and
# matplotlib's dependencies; no network) lacks the other pins of requirements-gpu.txt (torchsummary, torchinfo,
# matplotlib, nbformat, pyoxipng) and nbformat's dependencies (scripts/device-wheels.txt). `prepare` downloads those as cp312
# wheels at the pinned versions, packs MNIST/raw from $LESSON_DATA (default ../shared/data) as .device/mnist.tar.xz
# (9 MiB; torchvision needs the four unpacked IDX files, `run` unpacks them), and fails when what travels (the
# working tree and .device) is over 56 MiB. Then call the device tool's run with
#   command "bash scripts/device-record.sh run", carry [".device"], timeout_s 600
#
# `run` never stops at an error. It installs the wheels into $SITE_DIR (/tmp/site, put first on PYTHONPATH), unpacks
# MNIST into $DATA_DIR (/tmp/lesson-data, as LESSON_DATA) and writes a preflight (imports, versions against
# requirements-gpu.txt as a warning only, one CUDA tensor, an Agg savefig). Then it records each snippet in its own
# `python3 -m tools.record --device $DEVICE --force NAME` under `timeout`: the snippets that measure the GPU first,
# then every other one (or only the NAMEs given). Whatever happens, an EXIT trap removes the recorder's scratch
# folders and leaves in $OUT five files at most:
#   preflight.txt       the preflight, and every installed distribution with its folder
#   gpu.txt             nvidia-smi before and after the run (when the machine has it)
#   record.log          everything the recorder printed, each snippet between === lines with its status and seconds
#   summary.txt         one line per snippet (ok, FAILED rc, TIMEOUT, skipped) and `python3 -m tools.record --check`
#   recordings.tar.gz   docs/outputs/$DEVICE and docs/notebooks
# Its exit status is 0 when every snippet was recorded, else 1.
# Settings (environment): DEVICE (cuda; cpu to rehearse without a GPU), SNIPPET_TIMEOUT (150 s for one snippet),
# RUN_DEADLINE (420 s after the start: no snippet runs past it, and one that would start less than 10 s before it
# is skipped, which leaves time to pack inside a 600 s call), WHEELS_DIR (.device), SITE_DIR, DATA_DIR.
#
# Back here: tar -xzf <files_at>/recordings.tar.gz, then `python -m tools.record --check`, `mkdocs build --strict`,
# and commit docs/outputs/cuda and docs/notebooks. Rehearse `run` on the CPU: bash scripts/rehearse-device-run.sh
cd "$(dirname "$0")/.." || exit 2

LIMIT_MIB=56                          # the device tool carries 64 MiB; keep room
MACHINE_HAS=" torch torchvision numpy "   # pins of requirements-gpu.txt that the machine has at those versions
GPU_FIRST=(gpu_overhead memory_measured memory_timeline batch_size_search estimators memory_arithmetic
           grad_accumulation inference_memory mixed_precision checkpointing memory_leak oom_reading fast_path
           batch_size_effects)
MNIST_FILES=(MNIST/raw/train-images-idx3-ubyte MNIST/raw/train-labels-idx1-ubyte
             MNIST/raw/t10k-images-idx3-ubyte MNIST/raw/t10k-labels-idx1-ubyte)
MIN_SLOT=10                           # seconds: a snippet that would get less before the deadline is skipped

pins() {  # the name==version lines of a requirements file, comments dropped
  sed -nE 's/^[[:space:]]*([A-Za-z0-9_.-]+)[[:space:]]*==[[:space:]]*([^[:space:];#]+).*/\1==\2/p' "$1"
}

mib() { awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'; }

prepare() {
  set -euo pipefail
  local data=${LESSON_DATA:-../shared/data} wanted=() pin name
  while read -r pin; do
    name=${pin%%==*}
    [[ $MACHINE_HAS == *" ${name,,} "* ]] || wanted+=("$pin")
  done < <(pins requirements-gpu.txt)
  while read -r pin; do wanted+=("$pin"); done < <(pins scripts/device-wheels.txt)

  mkdir -p .device
  rm -f .device/*.whl .device/mnist.tar.gz
  echo "wheels for the GPU machine (cp312, manylinux x86_64): ${wanted[*]}"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .device "${wanted[@]}"
  local got
  got=$(find .device -maxdepth 1 -name '*.whl' | wc -l)
  if ((got != ${#wanted[@]})); then
    echo "error: expected ${#wanted[@]} wheels in .device, found $got" >&2; exit 1
  fi

  local file manifest
  for file in "${MNIST_FILES[@]}"; do
    [[ -f $data/$file ]] || { echo "error: $data/$file is missing; set LESSON_DATA to a folder that holds MNIST/raw" >&2
                              exit 1; }
  done
  manifest=$(cd "$data" && sha256sum "${MNIST_FILES[@]}")
  if [[ -f .device/mnist.tar.xz && -f .device/mnist.sha256 && $(< .device/mnist.sha256) == "$manifest" ]]; then
    echo "MNIST: .device/mnist.tar.xz is up to date"
  else
    echo "MNIST: packing $data/MNIST/raw into .device/mnist.tar.xz (xz, about 20 s)"
    tar -cJf .device/mnist.tar.xz.part -C "$data" "${MNIST_FILES[@]}"
    mv .device/mnist.tar.xz.part .device/mnist.tar.xz
    printf '%s\n' "$manifest" > .device/mnist.sha256
  fi

  local tree files device wheels mnist total changed
  tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
  files=$(git ls-files --cached --others --exclude-standard | wc -l)
  device=$(du -cb .device/* | tail -1 | cut -f1)
  wheels=$(du -cb .device/*.whl | tail -1 | cut -f1)
  total=$((tree + device))
  ls -l .device
  mnist=$(stat -c %s .device/mnist.tar.xz)
  echo "travels: $(mib "$total") of at most $LIMIT_MIB MiB: the working tree $(mib "$tree") ($files files)" \
       "+ .device $(mib "$device") (${#wanted[@]} wheels $(mib "$wheels"), MNIST $(mib "$mnist"))"
  if ((total > LIMIT_MIB * 1048576)); then
    echo "error: that is over $LIMIT_MIB MiB" >&2; exit 1
  fi
  changed=$(git status --porcelain --untracked-files=normal | wc -l)
  ((changed == 0)) || echo "note: the working tree travels as it is, with $changed uncommitted change(s)"
  echo 'next: the device tool, command "bash scripts/device-record.sh run", carry [".device"], timeout_s 600'
}

# ---------------------------------------------------------------------------------------------------------------- run
now_ms() {
  local t=${EPOCHREALTIME:-}
  if [[ -n $t ]]; then t=${t/[.,]/}; echo $((10#$t / 1000)); else date +%s%3N; fi
}

seconds_since() {  # ms → "12.3"
  local ms=$(($(now_ms) - $1))
  printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}

say() {  # print and append to a file
  local file=$1; shift
  printf '%s\n' "$*" | tee -a "$file"
}

read -r -d '' PREFLIGHT_PY <<'PY'
import importlib, os, sys, time
device, site, problems = os.environ["DEVICE"], os.environ.get("SITE_DIR", ""), 0
print(f"python3: {sys.executable} {sys.version.split()[0]}")
for name in ("torch", "torchvision", "torchsummary", "torchinfo", "matplotlib", "numpy", "nbformat", "oxipng"):
    started = time.perf_counter()
    try:
        module = importlib.import_module(name)
        print(f"import {name:<13} ok      {getattr(module, '__version__', '?'):<14} "
              f"{os.path.dirname(module.__file__)}  ({time.perf_counter() - started:.1f} s)")
    except Exception as error:
        problems += 1
        print(f"import {name:<13} FAILED  {type(error).__name__}: {error}")
try:                                   # what the carried wheels need, from their metadata
    from importlib import metadata
    from packaging.requirements import Requirement
    unmet = []
    for dist in (metadata.distributions(path=[site]) if site and os.path.isdir(site) else []):
        for line in dist.requires or []:
            need = Requirement(line)
            if need.marker and not need.marker.evaluate({"extra": ""}):
                continue
            try:
                have = metadata.version(need.name)
            except metadata.PackageNotFoundError:
                unmet.append(f"{dist.metadata['Name']} needs {need}: missing")
                continue
            if not need.specifier.contains(have, prereleases=True):
                unmet.append(f"{dist.metadata['Name']} needs {need}: have {have}")
    problems += len(unmet)
    print("carried wheels: every requirement met" if not unmet else "carried wheels: " + "; ".join(unmet))
except Exception as error:
    problems += 1
    print(f"carried wheels: could not check ({type(error).__name__}: {error})")
try:
    from tools import environment as e
    differences = e.key_differences(e.stamp(device), device)
    print(f"versions: as pinned in {e.pins_name(device)}" if not differences else
          f"versions: warning: {'; '.join(differences)} ({e.pins_name(device)}); recording anyway, "
          "each recording is stamped with the versions that ran")
except Exception as error:
    problems += 1
    print(f"versions: could not compare ({type(error).__name__}: {error})")
if device == "cuda":
    try:
        import torch
        x = torch.arange(1, 5, device="cuda", dtype=torch.float32)
        total = float((x * x).sum().item())
        torch.cuda.synchronize()
        print(f"cuda tensor: ok, sum of squares {total:g} (30 expected) on {torch.cuda.get_device_name(0)}, "
              f"CUDA {torch.version.cuda}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
        problems += total != 30
    except Exception as error:
        problems += 1
        print(f"cuda tensor: FAILED  {type(error).__name__}: {error}")
else:
    print(f"cuda tensor: skipped (DEVICE={device})")
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(2, 2))
    axes.plot([0, 1], [1, 0])
    path = "/tmp/device-record-preflight.png"
    figure.savefig(path)
    size = os.path.getsize(path)
    problems += size == 0
    print(f"savefig (Agg): ok, {size} bytes of PNG")
except Exception as error:
    problems += 1
    print(f"savefig (Agg): FAILED  {type(error).__name__}: {error}")
print(f"preflight: {problems} problem(s)" + (" (recording anyway)" if problems else ""))
sys.exit(min(problems, 100))
PY

read -r -d '' DISTRIBUTIONS_PY <<'PY'
from importlib import metadata
rows = sorted((d.metadata["Name"] or "?", d.version, str(d.locate_file(""))) for d in metadata.distributions())
for name, version, where in rows:
    print(f"{name}=={version}  {where}")
PY

install_wheels() {
  local wheels=$1 site=$2 found=() rc
  shopt -s nullglob
  found=("$wheels"/*.whl)
  shopt -u nullglob
  if ((${#found[@]} == 0)); then
    say "$PRE" "wheels: none in $wheels; using what python3 has"
    return
  fi
  PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip install -q --no-index --no-deps \
    --no-compile --no-cache-dir --upgrade --target "$site" "${found[@]}" >> "$PRE" 2>&1
  rc=$?
  if ((rc != 0)); then  # no working pip: a wheel is a zip laid out as site-packages, so unzip it there
    python3 -c 'import sys, zipfile
for wheel in sys.argv[2:]:
    zipfile.ZipFile(wheel).extractall(sys.argv[1])' "$site" "${found[@]}" >> "$PRE" 2>&1
    say "$PRE" "wheels: pip failed (exit $rc); unzipped ${#found[@]} from $wheels into $site (exit $?)"
  else
    say "$PRE" "wheels: ${#found[@]} from $wheels installed into $site (pip exit 0)"
  fi
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
}

unpack_mnist() {
  local wheels=$1 data=$2 manifest
  if [[ ! -f $wheels/mnist.tar.xz ]]; then
    if [[ -n ${LESSON_DATA:-} ]]; then
      say "$PRE" "MNIST: none carried; LESSON_DATA=$LESSON_DATA"
    else
      say "$PRE" "MNIST: warning: none carried ($wheels/mnist.tar.xz) and LESSON_DATA unset; snippets that read it fail"
    fi
    return
  fi
  manifest=$(cd "$wheels" && pwd)/mnist.sha256
  mkdir -p "$data"
  # Python's tarfile reads xz without an xz binary; tar is the fallback
  if python3 -c 'import sys, tarfile
with tarfile.open(sys.argv[1]) as archive:
    archive.extractall(sys.argv[2], **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))' \
       "$wheels/mnist.tar.xz" "$data" >> "$PRE" 2>&1 || tar -xJf "$wheels/mnist.tar.xz" -C "$data" >> "$PRE" 2>&1
  then
    if [[ -f $manifest ]] && (cd "$data" && sha256sum --quiet -c "$manifest") >> "$PRE" 2>&1; then
      say "$PRE" "MNIST: unpacked into $data, sha256 verified"
    else
      say "$PRE" "MNIST: warning: unpacked into $data, but its sha256 does not match $manifest"
    fi
  else
    say "$PRE" "MNIST: warning: could not unpack $wheels/mnist.tar.xz"
  fi
  export LESSON_DATA=$data
}

gpu_info() {  # $1: a heading
  command -v nvidia-smi > /dev/null || return 0
  {
    echo "=== nvidia-smi, $1"
    timeout 60 nvidia-smi
    timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,compute_mode --format=csv
  } >> "$OUT/gpu.txt" 2>&1
}

remove_scratch() {  # what a killed recorder leaves: docs/outputs/<device>/.NAME-xxxx/
  find docs/outputs -mindepth 2 -maxdepth 2 -type d -name '.*' -exec rm -rf {} + 2> /dev/null
}

finish() {
  local rc=$? name status line check check_rc packed=() ok=0 failed=0 timeouts=0 skipped=0 files
  trap - EXIT TERM INT HUP
  # the snippets a signal kept from running
  for name in "${TODO[@]}"; do
    [[ -n ${STATUS[$name]:-} ]] || { STATUS[$name]="skipped (interrupted)"; SECS[$name]="-"; }
  done
  remove_scratch
  for line in "docs/outputs/$DEVICE" docs/notebooks; do [[ -e $line ]] && packed+=("$line"); done
  if ((${#packed[@]})); then
    tar -czf "$OUT/recordings.tar.gz" "${packed[@]}"
  else
    tar -czf "$OUT/recordings.tar.gz" -T /dev/null
  fi
  check=$(timeout 120 python3 -m tools.record --check 2>&1)
  check_rc=$?
  gpu_info "after the run"
  {
    echo "device-record run on $(uname -n), DEVICE=$DEVICE, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf '%-22s %-22s %8s\n' snippet status seconds
    for name in "${TODO[@]}"; do
      status=${STATUS[$name]}
      printf '%-22s %-22s %8s\n' "$name" "$status" "${SECS[$name]}"
      case $status in
        ok) ((ok++)) ;;
        FAILED*) ((failed++)) ;;
        TIMEOUT*) ((timeouts++)) ;;
        *) ((skipped++)) ;;
      esac
    done
    echo "${#TODO[@]} snippet(s): $ok ok, $failed failed, $timeouts timed out, $skipped skipped;" \
         "whole run ${SECONDS} s (deadline ${RUN_DEADLINE} s, ${SNIPPET_TIMEOUT} s a snippet)"
    grep -E '^(versions|preflight|MNIST|wheels|cuda tensor):' "$PRE"
    echo "recordings.tar.gz: $(mib "$(stat -c %s "$OUT/recordings.tar.gz")") (${packed[*]:-nothing})"
    echo "\$ python3 -m tools.record --check   (exit $check_rc)"
    printf '%s\n' "$check"
  } > "$SUMMARY"
  files=$(find "$OUT" -mindepth 1 | wc -l)
  ((files <= 8)) || echo "warning: $files entries in $OUT; only 8 files come back" >> "$SUMMARY"
  echo
  cat "$SUMMARY"
  ((rc == 0 && ok == ${#TODO[@]})) || rc=1
  exit "$rc"
}

record_all() {
  local name left limit cut began rc status secs
  for name in "${TODO[@]}"; do
    left=$((RUN_DEADLINE - SECONDS))
    if ((left < MIN_SLOT)); then
      STATUS[$name]=skipped; SECS[$name]="-"
      say "$LOG" "=== $name: skipped (${SECONDS} s into the run, deadline ${RUN_DEADLINE} s)"
      continue
    fi
    limit=$SNIPPET_TIMEOUT cut=""
    ((left < limit)) && limit=$left cut=" (deadline)"
    echo "=== $name: python3 -m tools.record --device $DEVICE --force $name   (limit ${limit} s)" >> "$LOG"
    began=$(now_ms)
    timeout -k 10 "$limit" python3 -m tools.record --device "$DEVICE" --force "$name" >> "$LOG" 2>&1
    rc=$?
    secs=$(seconds_since "$began")
    if ((rc == 0)); then
      status=ok
    elif ((rc == 124)) || { ((rc == 137)) && ((${secs%.*} >= limit)); }; then
      status="TIMEOUT$cut"
      remove_scratch
    else
      status="FAILED $rc"
    fi
    STATUS[$name]=$status SECS[$name]=$secs
    say "$LOG" "=== $name: $status in $secs s"
  done
}

run() {
  if [[ -z ${OUT:-} ]]; then
    echo "error: OUT is not set; run this on the device machine, where OUT is the folder that comes back" >&2
    exit 2
  fi
  mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
  DEVICE=${DEVICE:-cuda} SNIPPET_TIMEOUT=${SNIPPET_TIMEOUT:-150} RUN_DEADLINE=${RUN_DEADLINE:-420}
  PRE=$OUT/preflight.txt LOG=$OUT/record.log SUMMARY=$OUT/summary.txt
  local wheels=${WHEELS_DIR:-.device} name path
  export SITE_DIR=${SITE_DIR:-/tmp/site} DEVICE PYTHONUNBUFFERED=1 MPLBACKEND=Agg
  declare -gA STATUS=() SECS=()
  TODO=()
  if (($#)); then
    TODO=("$@")
  else
    for name in "${GPU_FIRST[@]}"; do [[ -f snippets/$name.py ]] && TODO+=("$name"); done
    for path in snippets/*.py; do
      name=$(basename "$path" .py)
      [[ $name == _* || " ${GPU_FIRST[*]} " == *" $name "* ]] || TODO+=("$name")
    done
  fi
  : > "$PRE"; : > "$LOG"
  trap finish EXIT
  trap 'exit 143' TERM
  trap 'exit 130' INT
  trap 'exit 129' HUP

  say "$PRE" "device-record run: DEVICE=$DEVICE, ${#TODO[@]} snippet(s), $(uname -n), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  install_wheels "$wheels" "$SITE_DIR"
  unpack_mnist "$wheels" "${DATA_DIR:-/tmp/lesson-data}"
  timeout -k 10 120 python3 -c "$PREFLIGHT_PY" 2>&1 | tee -a "$PRE"
  {
    echo "--- installed distributions (first on sys.path wins)"
    timeout 60 python3 -c "$DISTRIBUTIONS_PY"
  } >> "$PRE" 2>&1
  gpu_info "before the run"
  [[ -f $OUT/gpu.txt ]] && head -n 20 "$OUT/gpu.txt"
  echo "recording ${#TODO[@]} snippet(s) on $DEVICE, ${SNIPPET_TIMEOUT} s each at most, none past ${RUN_DEADLINE} s" \
       "(${SECONDS} s gone)"
  record_all
}

case "${1:-}" in
  prepare) prepare ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 prepare | run [NAME ...]" >&2; exit 2 ;;
esac
