# azd preprovision hook on Windows (azure.yaml); the same as register-microsoft-app.sh.
# VNet mode (VNET_ENABLED=true) needs the Microsoft.App resource provider registered on the subscription.
# It never stops `azd up`: without the Azure CLI, or without the right to register, it says what to run.
$vnet = "$env:VNET_ENABLED".ToLowerInvariant()
if ($vnet -ne 'true') { exit 0 }

$subscription = "$env:AZURE_SUBSCRIPTION_ID"
$subArgs = @()
if ($subscription) { $subArgs = @('--subscription', $subscription) } else { $subscription = '<subscription id>' }
$command = "az provider register --namespace Microsoft.App --subscription $subscription --wait"
if (-not (Get-Command az -ErrorAction SilentlyContinue)) {
    Write-Warning "VNet mode needs the Microsoft.App resource provider; no Azure CLI here to check it. If it is not registered yet, run: $command"
    exit 0
}
$state = az provider show --namespace Microsoft.App @subArgs --query registrationState --output tsv 2>$null
if ($state -eq 'Registered') {
    Write-Host 'Microsoft.App resource provider: registered.'
    exit 0
}
Write-Host "Microsoft.App resource provider: $state; registering it (VNet mode needs it; this can take a few minutes)."
az provider register --namespace Microsoft.App @subArgs --wait
if ($LASTEXITCODE -eq 0) {
    Write-Host 'Microsoft.App resource provider: registered.'
} else {
    Write-Warning "Could not register the Microsoft.App resource provider (needs Contributor or Owner on the subscription). Ask someone who has it to run: $command"
}
exit 0
