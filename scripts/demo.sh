#!/usr/bin/env bash
# The whole chain on one machine: data, train (or reuse the champion), serve, simulate, monitor, evaluate.
# Usage: scripts/demo.sh [EPOCHS] [REQUESTS_PER_WINDOW] [SCORECARD_PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${1:-4}
REQUESTS=${2:-200}
SCORECARD=${3:-.digitdrift/monitoring_evaluation.json}
PY=.venv/bin/python
HOME_DIR=${DIGITDRIFT_HOME:-$PWD/.digitdrift}
STAMP=$(date +%Y%m%d-%H%M%S)
LOG="$HOME_DIR/demo-$STAMP-predictions.db"
PORT=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

echo "==> 1/5 model: train digits-cnn ($EPOCHS epochs) unless a champion exists"
$PY -m training keras --epochs "$EPOCHS" --run-name demo-keras --skip-if-champion
$PY -m training promote || true

echo "==> 2/5 serving models:/digits-cnn@champion on 127.0.0.1:$PORT (log: $LOG)"
$PY -m serving --port "$PORT" --prediction-log "$LOG" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null && break
  kill -0 $SERVER 2>/dev/null || { echo "the server failed to start" >&2; exit 1; }
  sleep 1
done

RUNS=()
for scenario in seasonal-japanese gradual-devanagari stable inverted-scans; do
  echo "==> 3/5 simulating $scenario ($REQUESTS requests per window)"
  RUN_DIR="$HOME_DIR/simulations/$scenario-$STAMP"
  $PY -m simulation run --scenario "$scenario" --requests-per-window "$REQUESTS" --url "http://127.0.0.1:$PORT" --run-dir "$RUN_DIR"
  RUNS+=("$RUN_DIR")
done
kill $SERVER; wait $SERVER 2>/dev/null || true

echo "==> 4/5 monitoring each run (with its ground truth) and 5/5 scoring the monitor"
$PY -m monitoring evaluate --log "$LOG" --runs "${RUNS[@]}" --out "$SCORECARD" \
  --reproduce-with "${SCORECARD_COMMAND:-scripts/demo.sh $EPOCHS $REQUESTS $SCORECARD}"

echo
echo "==> done. Where to look:"
echo "    MLflow UI: .venv/bin/mlflow ui --backend-store-uri ${MLFLOW_TRACKING_URI:-sqlite:///$HOME_DIR/mlflow.db}"
EXPERIMENT_ID=$($PY -c "from common.settings import load_settings; from common.tracking import use_tracking; print(use_tracking(load_settings()))" 2>/dev/null)
# MLflow 3.17's UI opens experiments in its GenAI workflow unless told otherwise; this link picks the model-training
# workflow, whose landing page is the runs table (the experiment also carries mlflow.experimentKind for older UIs)
echo "      then http://127.0.0.1:5000/#/experiments/${EXPERIMENT_ID}?workflowType=machine_learning (runs demo-keras, simulate-*, monitor-*)"
echo "    dashboards: $(ls -d "$HOME_DIR"/monitoring/evaluate-*-"$STAMP"*/dashboard.html 2>/dev/null | tr '\n' ' ')"
echo "    scorecard: $SCORECARD"
