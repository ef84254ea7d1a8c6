#!/bin/sh
# Deletes the archived documents for good: the destination storage account (every container and document
# in it, beyond the reach of blob soft delete), its delete locks, and its resource group when the
# preprovision hook created that group for this receiver and nothing else is in it. `azd down` never does
# this (docs/teardown.md). It lists what it will delete, then asks you to type the account's name.
#
#   sh infra/delete-documents.sh [--account NAME] [--resource-group GROUP]
#
# The names default to azd's environment (DESTINATION_STORAGE_ACCOUNT, DESTINATION_RESOURCE_GROUP, from
# the variables or `azd env get-value`). It refuses an empty name. Needs the Azure CLI, signed in as
# someone who may delete the account (Contributor on its group; Owner or User Access Administrator as well
# when it has a lock).
set -u
account=${DESTINATION_STORAGE_ACCOUNT:-}
group=${DESTINATION_RESOURCE_GROUP:-}
explicit_account='' explicit_group=''
while [ $# -gt 0 ]; do
    case "$1" in
        --account) account=${2:-}; explicit_account=1; shift 2 || shift ;;
        --resource-group) group=${2:-}; explicit_group=1; shift 2 || shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "delete-documents: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if command -v azd >/dev/null 2>&1; then
    [ -n "$account" ] || [ -n "$explicit_account" ] || account=$(azd env get-value DESTINATION_STORAGE_ACCOUNT 2>/dev/null || true)
    [ -n "$group" ] || [ -n "$explicit_group" ] || group=$(azd env get-value DESTINATION_RESOURCE_GROUP 2>/dev/null || true)
fi
if [ -z "$account" ] || [ -z "$group" ]; then
    echo "delete-documents: refusing: the account name or its resource group is empty (account '${account}', group '${group}'). Name both: --account NAME --resource-group GROUP" >&2
    exit 2
fi
command -v az >/dev/null 2>&1 || { echo "delete-documents: needs the Azure CLI (az), signed in (az login)." >&2; exit 2; }

id=$(az storage account show --name "$account" --resource-group "$group" --query id --output tsv 2>/dev/null)
if [ -z "$id" ]; then
    echo "delete-documents: no storage account $account in resource group $group (or no right to see it): nothing deleted." >&2
    exit 1
fi
containers=$(az storage container-rm list --storage-account "$id" --query "[].name" --output tsv 2>/dev/null)
locks=$(az lock list --resource "$id" --query "[].id" --output tsv 2>/dev/null)
purpose=$(az group show --name "$group" --query "tags.purpose" --output tsv 2>/dev/null)
others=$(az resource list --resource-group "$group" --query "[?id!='$id'].id" --output tsv 2>/dev/null)
delete_group=''
if [ "$purpose" = "smartdocumentor-documents" ] && [ -z "$others" ]; then
    delete_group=1
fi

echo "This deletes, for good (blob soft delete does not survive the account):"
echo "  storage account  $id"
if [ -n "$containers" ]; then
    printf '%s\n' "$containers" | sed 's/^/  container        /'
else
    echo "  (no containers)"
fi
if [ -n "$locks" ]; then
    printf '%s\n' "$locks" | sed 's/^/  lock             /'
fi
if [ -n "$delete_group" ]; then
    echo "  resource group   $group (made for these documents; nothing else is in it)"
else
    echo "  kept: resource group $group (not made by this receiver, or it holds other resources)"
fi
printf 'Type the account name (%s) to delete it: ' "$account"
read -r answer || answer=''
if [ "$answer" != "$account" ]; then
    echo "delete-documents: not confirmed: nothing deleted."
    exit 1
fi

if [ -n "$locks" ]; then
    printf '%s\n' "$locks" | while read -r lock; do
        az lock delete --ids "$lock" --output none || exit 1
    done || { echo "delete-documents: could not remove a lock: nothing else deleted." >&2; exit 1; }
fi
az storage account delete --ids "$id" --yes --output none ||
    { echo "delete-documents: could not delete $account." >&2; exit 1; }
echo "deleted: storage account $account"
if [ -n "$delete_group" ]; then
    az group delete --name "$group" --yes --output none ||
        { echo "delete-documents: could not delete resource group $group; delete it yourself: az group delete --name $group" >&2; exit 1; }
    echo "deleted: resource group $group"
fi
exit 0
