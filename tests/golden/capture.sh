#!/bin/sh
# Re-capture the text-report goldens from a real terminal: tmux panes of 60, 100 and 160 columns.
# capture-pane -J joins lines the terminal soft-wrapped, so a command longer than the pane comes back
# as the one line the user copies. Run from the repository root after changing doctor/report/render_text.py.
set -eu
for report in scout-cpu h100-healthy; do
  for cols in 60 100 160; do
    tmux kill-session -t "golden" 2>/dev/null || true
    tmux new-session -d -s golden -x "$cols" -y 400 -c "$PWD" \
      "env -u COLUMNS PYTHONPATH=$PWD python tests/golden/render.py tests/golden/$report.json; sleep 30"
    sleep 4
    tmux capture-pane -p -J -t golden -S - -E - | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' \
      > "tests/golden/$report.text-$cols.txt"
    tmux kill-session -t golden
  done
done
