#!/usr/bin/env bash
# Ray worker node: the non-lead tasks of osmo/ray-sweep.yaml (also runnable by hand or in tests).
#
# Joins the head at HEAD_HOST:RAY_PORT and blocks. `ray start` is retried (after a `ray stop` that
# clears what a failed attempt left) while the head is not reachable: its DNS name may not resolve yet,
# its GCS may not listen yet, or it is being restarted (then this node joins the new head). A worker
# that finds no head for JOIN_TIMEOUT_S seconds in a row gives up. When the head task exits, OSMO ends
# this task with it (the lead ends the group).
#
# Settings (environment): HEAD_HOST, RAY_PORT (6379), JOIN_RETRY_S (5), JOIN_TIMEOUT_S (900),
# SHM_SIZE (Ray's object store, e.g. 8Gi), RAY_START_ARGS (extra arguments), RAY_AUTH_TOKEN.
# Loaded with `localpath`: never put Jinja's opening sequences in this file.
set -uo pipefail

: "${HEAD_HOST:?set HEAD_HOST to the address of the head node}"
: "${RAY_PORT:=6379}" "${JOIN_RETRY_S:=5}" "${JOIN_TIMEOUT_S:=900}" "${RAY_START_ARGS:=}"

if [ "${RAY_AUTH_MODE:-token}" != "disabled" ]; then
  : "${RAY_AUTH_TOKEN:?set RAY_AUTH_TOKEN to the token of the cluster (an OSMO credential mapped into every task)}"
  export RAY_AUTH_MODE=token
fi
object_store=$(python -m tune_app.cluster.node object-store "${SHM_SIZE:-}") || exit 2

since=$SECONDS
while true; do
  start=$SECONDS
  # shellcheck disable=SC2086
  ray start --address="$HEAD_HOST:$RAY_PORT" --block --disable-usage-stats $object_store $RAY_START_ARGS
  # --block returns when this node's Ray stops (the head went away) or the join failed.
  if [ $((SECONDS - start)) -gt 30 ]; then since=$SECONDS; fi     # it was up: the head may be coming back
  ray stop --force >/dev/null 2>&1 || true
  if [ $((SECONDS - since)) -ge "$JOIN_TIMEOUT_S" ]; then
    echo "worker.sh: no Ray head at $HEAD_HOST:$RAY_PORT for $JOIN_TIMEOUT_S s; giving up" >&2
    exit 1
  fi
  echo "worker.sh: not joined to $HEAD_HOST:$RAY_PORT; retrying in $JOIN_RETRY_S s" >&2
  sleep "$JOIN_RETRY_S"
done
