# azd postprovision hook on Windows (azure.yaml); the same as wait-for-roles.sh: waits (at most
# ROLE_WAIT_TIMEOUT_SECONDS, 600) until the deploying identity can read the package container, so the
# first `azd deploy` does not get 403 while role assignments propagate.
$account = "$env:HOST_STORAGE_ACCOUNT"
$container = "$env:DEPLOYMENT_CONTAINER"
$timeout = if ($env:ROLE_WAIT_TIMEOUT_SECONDS) { [int]$env:ROLE_WAIT_TIMEOUT_SECONDS } else { 600 }
$interval = if ($env:ROLE_WAIT_INTERVAL_SECONDS) { [int]$env:ROLE_WAIT_INTERVAL_SECONDS } else { 10 }
if ($interval -lt 1) { $interval = 1 }
$retry = 'if azd deploy then gets 403, run azd deploy again in a few minutes'

function Skip([string]$why) {
    Write-Host "waiting for roles: skipped: $why; $retry."
    exit 0
}
if ("$env:VNET_ENABLED".ToLowerInvariant() -eq 'true') { Skip "VNet mode (the host storage is reachable only from the app's network)" }
if (-not $env:AZURE_PRINCIPAL_ID) { Skip 'azd did not name the signed-in principal (AZURE_PRINCIPAL_ID), so it has no role to probe with' }
if (-not $account -or -not $container) { Skip 'HOST_STORAGE_ACCOUNT or DEPLOYMENT_CONTAINER is empty (provisioning did not finish?)' }
if (-not (Get-Command az -ErrorAction SilentlyContinue)) { Skip 'no Azure CLI (az) here' }

$waited = 0
$said = 0
while ($true) {
    $answer = az storage blob list --auth-mode login --account-name $account --container-name $container --num-results 1 --only-show-errors --output none 2>&1
    if ($LASTEXITCODE -eq 0) {
        Write-Host "waiting for roles: in force after about $waited s (the package container $account/$container can be read)."
        exit 0
    }
    if ($waited -ge $timeout) {
        Write-Error "waiting for roles: gave up after $waited s: $account/$container still refuses the deploying identity (last answer: $($answer | Select-Object -Last 1)). Role assignments can take up to about ten minutes to apply: run azd deploy in a few minutes (provisioning is done). If it keeps failing, check the roles in docs/roles.md."
        exit 1
    }
    if ($waited -eq 0 -or ($waited - $said) -ge 30) {
        Write-Host "waiting for roles: the roles assigned by this deployment are not in force yet ($waited s so far, at most $timeout s); trying again every $interval s."
        $said = $waited
    }
    Start-Sleep -Seconds $interval
    $waited += $interval
}
