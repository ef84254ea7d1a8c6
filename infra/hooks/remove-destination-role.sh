#!/bin/sh
# azd predown hook (azure.yaml): the app identity's role on the destination container lives in the
# documents' resource group, which `azd down` leaves alone; without this it would outlive the identity
# ("Identity not found" in the portal). Deletes that one assignment (DESTINATION_ROLE_ASSIGNMENT_ID, an
# output of the deployment) and nothing else: your own role on the container stays, so you can still read
# the documents. It never stops `azd down`: on failure it says what to run.
set -u
id=${DESTINATION_ROLE_ASSIGNMENT_ID:-}
if [ -z "$id" ]; then
    echo "app role on the documents: nothing recorded to remove."
    exit 0
fi
command="az role assignment delete --ids $id"
if ! command -v az >/dev/null 2>&1; then
    echo "app role on the documents: no Azure CLI here; to remove it, run: $command" >&2
    exit 0
fi
if az role assignment delete --ids "$id" --only-show-errors --output none; then
    echo "app role on the documents: removed (the documents and your own role stay)."
else
    echo "app role on the documents: could not remove it (needs Owner, User Access Administrator or Role Based Access Control Administrator on the documents' resource group); later run: $command" >&2
fi
exit 0
