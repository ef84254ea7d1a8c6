#!/bin/sh
# azd postprovision hook (azure.yaml): waits until the roles this deployment assigned on the host storage
# are in force before `azd deploy` uploads the package. With shared keys off, a first deploy started while
# role assignments still propagate gets 403 (azd's known first-deploy race). Role assignments usually
# apply within a minute or two; this waits at most ROLE_WAIT_TIMEOUT_SECONDS (600, ten minutes).
#
# The probe: the deploying identity (AZURE_PRINCIPAL_ID, which got Storage Blob Data Reader on the
# package container in the same deployment as the app's roles on that account) lists that container
# (`az storage blob list --auth-mode login`). Every ROLE_WAIT_INTERVAL_SECONDS (10) until it is allowed,
# with a line every 30 s. It stops by itself: exit 1 after the timeout, saying what to run.
# Skipped (exit 0, with a line): no Azure CLI, no AZURE_PRINCIPAL_ID (no role to probe with), VNet mode
# (the host storage takes no public traffic, so it cannot be probed from here).
# ROLE_WAIT_SLEEP names the sleep command (tests pass a fake so they do not wait on the clock).
set -u
account=${HOST_STORAGE_ACCOUNT:-}
container=${DEPLOYMENT_CONTAINER:-}
timeout=${ROLE_WAIT_TIMEOUT_SECONDS:-600}
interval=${ROLE_WAIT_INTERVAL_SECONDS:-10}
sleeper=${ROLE_WAIT_SLEEP:-sleep}
vnet=$(printf '%s' "${VNET_ENABLED:-false}" | tr '[:upper:]' '[:lower:]')
retry="if azd deploy then gets 403, run azd deploy again in a few minutes"

skip() {
    echo "waiting for roles: skipped: $*; $retry."
    exit 0
}
[ "$vnet" = "true" ] && skip "VNet mode (the host storage is reachable only from the app's network)"
[ -n "${AZURE_PRINCIPAL_ID:-}" ] || skip "azd did not name the signed-in principal (AZURE_PRINCIPAL_ID), so it has no role to probe with"
if [ -z "$account" ] || [ -z "$container" ]; then
    skip "HOST_STORAGE_ACCOUNT or DEPLOYMENT_CONTAINER is empty (provisioning did not finish?)"
fi
command -v az >/dev/null 2>&1 || skip "no Azure CLI (az) here"
case "$timeout$interval" in
    *[!0-9]*) echo "waiting for roles: ROLE_WAIT_TIMEOUT_SECONDS and ROLE_WAIT_INTERVAL_SECONDS must be whole seconds" >&2; exit 2 ;;
esac
[ "$interval" -ge 1 ] || interval=1

waited=0
said=0
while :; do
    if error=$(az storage blob list --auth-mode login --account-name "$account" --container-name "$container" \
        --num-results 1 --only-show-errors --output none 2>&1); then
        if [ "$waited" -eq 0 ]; then
            echo "waiting for roles: in force (the package container $account/$container can be read)."
        else
            echo "waiting for roles: in force after about $waited s (the package container $account/$container can be read)."
        fi
        exit 0
    fi
    if [ "$waited" -ge "$timeout" ]; then
        last=$(printf '%s\n' "$error" | sed -n '/./p' | tail -n 1)
        echo "waiting for roles: gave up after $waited s: $account/$container still refuses the deploying identity (last answer: ${last:-none}). Role assignments can take up to about ten minutes to apply: run azd deploy in a few minutes (provisioning is done). If it keeps failing, check the roles in docs/roles.md." >&2
        exit 1
    fi
    if [ "$waited" -eq 0 ] || [ $((waited - said)) -ge 30 ]; then
        echo "waiting for roles: the roles assigned by this deployment are not in force yet ($waited s so far, at most $timeout s); trying again every $interval s."
        said=$waited
    fi
    "$sleeper" "$interval"
    waited=$((waited + interval))
done
