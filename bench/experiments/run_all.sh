#!/usr/bin/env bash
# Every distill experiment in priority order under the shared CPU lock: the DSE teachers in one hold,
# then the DSE students and the Trans-Encoder runs in one hold (so the sequence finishes in time on a
# contended box). A step whose report exists is skipped (each command also resumes with --resume).
#   setsid nohup bash bench/experiments/run_all.sh > runs/distill_all.log 2>&1 &
set -uo pipefail
L=/tmp/pairsmith-cpu.lock
export R=${RUNS:-runs}
mkdir -p "$R"
step() {  # step REPORT LOG COMMAND...  (runs inside the lock held by the caller)
  local report=$1 log=$2; shift 2
  if [ -f "$report" ]; then echo "skip $report"; return; fi
  echo "$(date -u +%FT%TZ) start $*"; "$@" >> "$log" 2>&1; echo "$(date -u +%FT%TZ) end rc=$?"
}
export -f step
[ -f "$R/teacher-mrpc/report.json" ] ||
  flock $L bash -c 'step "$R/teacher-mrpc/report.json" "$R/dse_teachers.log" bash bench/experiments/dse_teachers.sh'
flock $L bash -c '
step "$R/dse-speed.json" "$R/dse_students.log" bash bench/experiments/dse_students.sh
step "$R/te-default/report.json" "$R/te-default.log" bash bench/experiments/trans_encoder.sh default
step "$R/te-weak/report.json" "$R/te-weak.log" bash bench/experiments/trans_encoder.sh weak
step "$R/te-mutual/report.json" "$R/te-mutual.log" bash bench/experiments/trans_encoder.sh mutual
'
