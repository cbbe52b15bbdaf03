#!/usr/bin/env bash
# Ray worker node: the non-lead tasks of osmo/ray-sweep.yaml (also runnable by hand or in tests).
#
# Joins the head at HEAD_HOST:RAY_PORT and blocks. `ray start` is retried until it succeeds: the
# head's DNS name may not resolve yet and its GCS may not listen yet when this starts. When the
# head task exits, OSMO ends this task with it (the lead ends the group).
#
# Settings (environment): HEAD_HOST, RAY_PORT (6379), JOIN_RETRY_S (5), RAY_START_ARGS (extra arguments).
# Loaded with `localpath`: never put Jinja's opening sequences in this file.
set -uo pipefail

: "${HEAD_HOST:?set HEAD_HOST to the address of the head node}"
: "${RAY_PORT:=6379}" "${JOIN_RETRY_S:=5}" "${RAY_START_ARGS:=}"

if [ "${RAY_AUTH_MODE:-token}" != "disabled" ]; then
  : "${RAY_AUTH_TOKEN:?set RAY_AUTH_TOKEN to the token of the cluster (an OSMO credential mapped into every task)}"
  export RAY_AUTH_MODE=token
fi

# shellcheck disable=SC2086
until ray start --address="$HEAD_HOST:$RAY_PORT" --block --disable-usage-stats $RAY_START_ARGS; do
  echo "worker.sh: could not join $HEAD_HOST:$RAY_PORT yet; retrying in $JOIN_RETRY_S s" >&2
  sleep "$JOIN_RETRY_S"
done
