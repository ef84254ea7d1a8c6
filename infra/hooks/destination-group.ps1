# azd preprovision hook on Windows (through preprovision.ps1); the same as destination-group.sh: the
# documents' resource group exists before the deployment, so `azd down` never deletes it.
$envName = "$env:AZURE_ENV_NAME"
$account = "$env:DESTINATION_STORAGE_ACCOUNT_NAME"
$group = "$env:DESTINATION_RESOURCE_GROUP_NAME"
$location = "$env:AZURE_LOCATION"
$subscription = "$env:AZURE_SUBSCRIPTION_ID"
$appGroup = "$env:AZURE_RESOURCE_GROUP_NAME"
if (-not $appGroup) { $appGroup = "rg-$envName" }
$subArgs = @()
if ($subscription) { $subArgs = @('--subscription', $subscription) }

function Fail([string]$message) {
    Write-Error "destination resource group: $message"
    exit 1
}

if ($account -and -not $group) {
    Fail "DESTINATION_STORAGE_ACCOUNT_NAME is $account but DESTINATION_RESOURCE_GROUP_NAME is empty. Name its resource group: azd env set DESTINATION_RESOURCE_GROUP_NAME (az storage account show --name $account --query resourceGroup --output tsv)"
}
if (-not $group) {
    if (-not $envName) { Fail 'AZURE_ENV_NAME is empty: run this through azd (azd up / azd provision).' }
    $group = "rg-$envName-documents"
}
if ($group.ToLowerInvariant() -eq $appGroup.ToLowerInvariant()) {
    Fail "$group is the app's own resource group, which azd down deletes with everything in it. Choose another: azd env set DESTINATION_RESOURCE_GROUP_NAME <group>"
}
if (-not (Get-Command az -ErrorAction SilentlyContinue)) {
    Fail "no Azure CLI (az) here to check that $group exists. Install it and run az login, or create the group yourself (az group create --name $group --location <region>) and run this again."
}
$exists = az group exists --name $group @subArgs 2>$null
if ($exists -eq 'true') {
    Write-Host "destination resource group: $group exists; the documents stay in it when azd down runs."
} elseif ($exists -ne 'false') {
    Fail "could not check $group with the Azure CLI (signed in? az login, and az account show names the subscription azd uses)."
} elseif ($account) {
    Fail "$group, the resource group named for the existing account $account, does not exist. Check DESTINATION_RESOURCE_GROUP_NAME."
} else {
    if (-not $location) { Fail 'AZURE_LOCATION is empty: azd env set AZURE_LOCATION <region>' }
    Write-Host "destination resource group: creating $group in $location (it holds the documents and outlives azd down)."
    az group create --name $group --location $location @subArgs --tags 'purpose=smartdocumentor-documents' "created-for=$envName" --output none
    if ($LASTEXITCODE -ne 0) {
        Fail "could not create $group (needs Contributor on the subscription). Ask someone who has it to run: az group create --name $group --location $location"
    }
}
if (-not $env:DESTINATION_RESOURCE_GROUP_NAME -and (Get-Command azd -ErrorAction SilentlyContinue)) {
    azd env set DESTINATION_RESOURCE_GROUP_NAME $group *> $null
}
exit 0
