#!/usr/bin/env bash
# Ray head + sweep driver: the lead task of osmo/ray-sweep.yaml (also runnable by hand or in tests).
#
# Starts `ray start --head`, runs the sweep on this cluster once NUM_WORKERS workers have joined,
# copies the sweep's summary, report, best config and best checkpoint to OUTPUT_DIR, and exits with
# the sweep's exit code. On OSMO the lead's exit ends the group (workers included) and becomes the
# workflow's result, so nothing here waits forever.
#
# Settings (environment): SEARCH_SPACE, NUM_WORKERS, STORAGE_PATH (shared: NFS path or bucket URI when
# NUM_WORKERS > 0), SWEEP_NAME, OUTPUT_DIR, RAY_PORT (6379), WAIT_TIMEOUT (s, 600), TUNE_APP_DIR
# (the checkout to run in, default: current dir), TUNE_APP_ARGV (extra `tune_app run` arguments as a
# JSON list; osmo render writes it), TUNE_APP_ARGS (the same, split on spaces), SHM_SIZE (Ray's object
# store, e.g. 8Gi), RAY_START_ARGS. Started again after a crash, it resumes the same sweep.
# This file is loaded into the workflow with `localpath`, so it must never contain Jinja's
# opening sequences (double braces, brace-percent, brace-hash).
set -euo pipefail

: "${SEARCH_SPACE:?set SEARCH_SPACE to the search-space file, e.g. search_spaces/lr_grid.yaml}"
: "${NUM_WORKERS:=0}" "${RAY_PORT:=6379}" "${WAIT_TIMEOUT:=600}" "${SWEEP_NAME:=sweep}"
: "${STORAGE_PATH:=}" "${OUTPUT_DIR:=}" "${TUNE_APP_ARGS:=}" "${RAY_START_ARGS:=}"
cd "${TUNE_APP_DIR:-.}"

if [ "$NUM_WORKERS" -gt 0 ] && [ -z "$STORAGE_PATH" ]; then
  echo "head.sh: STORAGE_PATH is empty but NUM_WORKERS=$NUM_WORKERS: trials on worker nodes need shared storage" \
       "(an NFS path or a bucket URI such as s3://bucket/tune_app)" >&2
  exit 2
fi

# Token authentication: Ray's GCS and raylets listen on the pod network. The token comes from an OSMO
# credential (the workflow's ray_credential) so workers can join; a head without workers makes its own.
# RAY_AUTH_MODE=disabled turns authentication off (anyone on the network could then run code here).
if [ "${RAY_AUTH_MODE:-token}" != "disabled" ]; then
  if [ -z "${RAY_AUTH_TOKEN:-}" ]; then
    if [ "$NUM_WORKERS" -gt 0 ]; then
      echo "head.sh: RAY_AUTH_TOKEN is empty but NUM_WORKERS=$NUM_WORKERS: workers need the cluster's token;" \
           "map an OSMO credential to RAY_AUTH_TOKEN in every task (see osmo/README.md)" >&2
      exit 2
    fi
    RAY_AUTH_TOKEN=$(python -c 'import secrets; print(secrets.token_hex(32))')
  fi
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN
fi

# Arguments from TUNE_APP_ARGV, one per line (read, never evaluated); the object store's size.
argv_text=$(python -m tune_app.cluster.node argv) || exit 2
argv=()
if [ -n "$argv_text" ]; then mapfile -t argv <<< "$argv_text"; fi
object_store=$(python -m tune_app.cluster.node object-store "${SHM_SIZE:-}") || exit 2

# The dashboard stays on 127.0.0.1: `osmo workflow port-forward WF head --port 8265` reaches it there.
# shellcheck disable=SC2086
ray start --head --port="$RAY_PORT" --dashboard-host=127.0.0.1 --disable-usage-stats $object_store $RAY_START_ARGS

storage_args=()
[ -n "$STORAGE_PATH" ] && storage_args=(--storage "$STORAGE_PATH")
status=0
# --dashboard: tune_app's live sweep page on 127.0.0.1:${TUNE_DASHBOARD_PORT:-8266} while the sweep runs (port-forward it).
# shellcheck disable=SC2086
python -m tune_app run "$SEARCH_SPACE" --address auto --name "$SWEEP_NAME" --resume-existing \
  --dashboard --no-hold --tune-dashboard-port "${TUNE_DASHBOARD_PORT:-8266}" \
  --wait-nodes "$((NUM_WORKERS + 1))" --wait-timeout "$WAIT_TIMEOUT" "${storage_args[@]}" "${argv[@]}" $TUNE_APP_ARGS \
  || status=$?

if [ -n "$OUTPUT_DIR" ]; then
  # A bucket run directory is mirrored (without checkpoints, best included) to runs/NAME by tune_app.
  case "$STORAGE_PATH" in
    *://*) run_dir="runs/$SWEEP_NAME" ;;
    "") run_dir="runs/$SWEEP_NAME" ;;
    *) run_dir="$STORAGE_PATH/$SWEEP_NAME" ;;
  esac
  mkdir -p "$OUTPUT_DIR"
  for item in summary.json best_config.yaml report.html best sweep.json wandb; do
    if [ -e "$run_dir/$item" ]; then cp -r "$run_dir/$item" "$OUTPUT_DIR/"; fi
  done
  echo "head.sh: results in $OUTPUT_DIR"
fi
exit "$status"
