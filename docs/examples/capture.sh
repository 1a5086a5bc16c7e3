#!/bin/sh
# Capture what a person sees in a real terminal: tmux panes 80 and 120 columns wide, 50 rows high.
# capture-pane -J joins what the terminal soft-wrapped, so a long command comes back as the one line a
# user copies. Run from the repository root: sh docs/examples/capture.sh
set -eu
SEED="--model meta-llama/Llama-4-Scout-17B-16E-Instruct --quant bnb-4bit --context 128k --gpus 1xH100-80GB"
capture() {  # NAME COLUMNS COMMAND...
  name=$1 cols=$2
  shift 2
  done=$(mktemp -u)
  tmux kill-session -t capture 2>/dev/null || true
  tmux new-session -d -s capture -x "$cols" -y 50 -c "$PWD" \
    "env -u COLUMNS PYTHONPATH=$PWD NO_COLOR=1 $*; touch $done; sleep 60"
  for _ in $(seq 120); do  # until the command has finished
    [ -e "$done" ] && break
    sleep 1
  done
  rm -f "$done"
  { echo "\$ $(echo "$*" | sed -e 's/python3 -m doctor/doctor/' \
      -e "s|python3 docs/examples/h100_scenario.py|doctor $SEED   # on the healthy-h100 scenario|")"
    tmux capture-pane -p -J -t capture -S - -E - | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}'; } \
    > "docs/examples/$name.$cols.txt"
  tmux kill-session -t capture
}
for cols in 80 120; do
  capture doctor-seed-cpu "$cols" python3 -m doctor $SEED
  capture doctor-seed-cpu-v "$cols" python3 -m doctor $SEED -v
  capture doctor-explain-memory-fit "$cols" python3 -m doctor explain memory-fit
  capture doctor-seed-h100-scenario "$cols" python3 docs/examples/h100_scenario.py
done
