# azd preprovision hook on Windows (azure.yaml); the same as preprovision.sh.
& "$PSScriptRoot/register-microsoft-app.ps1"
& "$PSScriptRoot/destination-group.ps1"
exit $LASTEXITCODE
