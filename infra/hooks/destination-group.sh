#!/bin/sh
# azd preprovision hook (through preprovision.sh): makes sure the documents' resource group exists BEFORE
# the deployment, so the template never creates it and `azd down` (azd >= 1.24.1 never deletes a resource
# group that existed before the deployment) never deletes it (docs/teardown.md).
#
# - DESTINATION_STORAGE_ACCOUNT_NAME empty (a new account, the default): the group is
#   DESTINATION_RESOURCE_GROUP_NAME, or rg-<environment>-documents (main.bicep's default too); created
#   in AZURE_LOCATION if missing, and recorded with `azd env set`.
# - DESTINATION_STORAGE_ACCOUNT_NAME set (an existing account): DESTINATION_RESOURCE_GROUP_NAME must name
#   its group, which must exist; nothing is created.
# The group is never the app's own (rg-<environment> or AZURE_RESOURCE_GROUP_NAME): `azd down` deletes that.
# It exits non-zero, with what to do, when it cannot make sure: provisioning would fail or put the
# documents where `azd down` deletes them.
set -u
env_name=${AZURE_ENV_NAME:-}
account=${DESTINATION_STORAGE_ACCOUNT_NAME:-}
group=${DESTINATION_RESOURCE_GROUP_NAME:-}
location=${AZURE_LOCATION:-}
subscription=${AZURE_SUBSCRIPTION_ID:-}
app_group=${AZURE_RESOURCE_GROUP_NAME:-}
[ -n "$app_group" ] || app_group="rg-$env_name"

fail() {
    echo "destination resource group: $*" >&2
    exit 1
}

if [ -n "$account" ] && [ -z "$group" ]; then
    fail "DESTINATION_STORAGE_ACCOUNT_NAME is $account but DESTINATION_RESOURCE_GROUP_NAME is empty. Name its resource group: azd env set DESTINATION_RESOURCE_GROUP_NAME \"\$(az storage account show --name $account --query resourceGroup --output tsv)\""
fi
if [ -z "$group" ]; then
    [ -n "$env_name" ] || fail "AZURE_ENV_NAME is empty: run this through azd (azd up / azd provision)."
    group="rg-$env_name-documents"
fi
lower_group=$(printf '%s' "$group" | tr '[:upper:]' '[:lower:]')
lower_app=$(printf '%s' "$app_group" | tr '[:upper:]' '[:lower:]')
if [ "$lower_group" = "$lower_app" ]; then
    fail "$group is the app's own resource group, which azd down deletes with everything in it. Choose another: azd env set DESTINATION_RESOURCE_GROUP_NAME <group>"
fi
if ! command -v az >/dev/null 2>&1; then
    fail "no Azure CLI (az) here to check that $group exists. Install it and run az login, or create the group yourself (az group create --name $group --location <region>) and run this again."
fi

exists=$(az group exists --name "$group" ${subscription:+--subscription "$subscription"} 2>/dev/null)
if [ "$exists" = "true" ]; then
    echo "destination resource group: $group exists; the documents stay in it when azd down runs."
elif [ "$exists" != "false" ]; then
    fail "could not check $group with the Azure CLI (signed in? az login, and az account show names the subscription azd uses)."
elif [ -n "$account" ]; then
    fail "$group, the resource group named for the existing account $account, does not exist. Check DESTINATION_RESOURCE_GROUP_NAME."
else
    [ -n "$location" ] || fail "AZURE_LOCATION is empty: azd env set AZURE_LOCATION <region>"
    echo "destination resource group: creating $group in $location (it holds the documents and outlives azd down)."
    # Not tagged azd-env-name: it is not one of the groups this environment's deployment owns.
    az group create --name "$group" --location "$location" ${subscription:+--subscription "$subscription"} \
        --tags "purpose=smartdocumentor-documents" "created-for=$env_name" --output none ||
        fail "could not create $group (needs Contributor on the subscription). Ask someone who has it to run: az group create --name $group --location $location"
fi

if [ -z "${DESTINATION_RESOURCE_GROUP_NAME:-}" ] && command -v azd >/dev/null 2>&1; then
    azd env set DESTINATION_RESOURCE_GROUP_NAME "$group" >/dev/null 2>&1 || true
fi
exit 0
