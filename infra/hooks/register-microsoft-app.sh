#!/bin/sh
# azd preprovision hook (azure.yaml). VNet mode (VNET_ENABLED=true) integrates the Flex Consumption app
# with a subnet delegated to Microsoft.App/environments, which needs the Microsoft.App resource provider
# registered on the subscription; ARM does not register it by itself, since no Microsoft.App resource is
# deployed. Registering once per subscription is enough and needs Contributor or Owner there.
# Without VNet mode this does nothing. It never stops `azd up`: if the Azure CLI is missing or not signed
# in, it says what to run, and provisioning goes on (and fails with MissingSubscriptionRegistration if
# the provider really is unregistered).
set -u
vnet=$(printf '%s' "${VNET_ENABLED:-false}" | tr '[:upper:]' '[:lower:]')
[ "$vnet" = "true" ] || exit 0

subscription=${AZURE_SUBSCRIPTION_ID:-}
command="az provider register --namespace Microsoft.App --subscription ${subscription:-<subscription id>} --wait"
if ! command -v az >/dev/null 2>&1; then
    echo "VNet mode needs the Microsoft.App resource provider; no Azure CLI here to check it. If it is not registered yet, run: $command" >&2
    exit 0
fi
state=$(az provider show --namespace Microsoft.App ${subscription:+--subscription "$subscription"} --query registrationState --output tsv 2>/dev/null)
if [ "$state" = "Registered" ]; then
    echo "Microsoft.App resource provider: registered."
    exit 0
fi
echo "Microsoft.App resource provider: ${state:-unknown}; registering it (VNet mode needs it; this can take a few minutes)."
if az provider register --namespace Microsoft.App ${subscription:+--subscription "$subscription"} --wait; then
    echo "Microsoft.App resource provider: registered."
else
    echo "Could not register the Microsoft.App resource provider (needs Contributor or Owner on the subscription). Ask someone who has it to run: $command" >&2
fi
exit 0
