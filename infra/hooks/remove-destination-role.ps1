# azd predown hook on Windows (azure.yaml); the same as remove-destination-role.sh: deletes the app
# identity's role on the destination container (it lives in the documents' group, which azd down keeps).
$id = "$env:DESTINATION_ROLE_ASSIGNMENT_ID"
if (-not $id) {
    Write-Host 'app role on the documents: nothing recorded to remove.'
    exit 0
}
$command = "az role assignment delete --ids $id"
if (-not (Get-Command az -ErrorAction SilentlyContinue)) {
    Write-Warning "app role on the documents: no Azure CLI here; to remove it, run: $command"
    exit 0
}
az role assignment delete --ids $id --only-show-errors --output none
if ($LASTEXITCODE -eq 0) {
    Write-Host 'app role on the documents: removed (the documents and your own role stay).'
} else {
    Write-Warning "app role on the documents: could not remove it (needs Owner, User Access Administrator or Role Based Access Control Administrator on the documents' resource group); later run: $command"
}
exit 0
