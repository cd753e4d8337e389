#!/usr/bin/env bash
# The quickstart: a run that fails half-way, then its resume. Run from the repo root
# (`make run` does) with the blokrun command on PATH.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export BLOKRUN_HOME="${BLOKRUN_HOME:-.blokrun}"
export QUICKSTART_LEDGER="${QUICKSTART_LEDGER:-$BLOKRUN_HOME/quickstart-ledger.txt}"
mkdir -p "$BLOKRUN_HOME"
id="quickstart-$(date +%Y%m%d-%H%M%S)-$$"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "1. Run the workflow while the payment provider is down (this fails at step 3)"
echo "\$ PAYMENT_PROVIDER_DOWN=1 blokrun run examples/quickstart/workflow.json --input-file examples/quickstart/input.json --request-id $id"
set +e
PAYMENT_PROVIDER_DOWN=1 blokrun --log-level info run "$here/workflow.json" --input-file "$here/input.json" --request-id "$id"
code=$?
set -e
echo "(exit code $code: the run failed; steps 1 and 2 are checkpointed)"

say "2. What is stored for the run"
echo "\$ blokrun inspect $id"
blokrun inspect "$id"

say "3. The provider is back: resume. Steps 1 and 2 are not run again"
echo "\$ blokrun resume $id"
blokrun --log-level info resume "$id"

say "4. Which steps ran, in order (from the nodes' ledger: each step exactly once)"
grep "^$id " "$QUICKSTART_LEDGER"
blokrun inspect "$id"
