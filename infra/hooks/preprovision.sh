#!/bin/sh
# azd preprovision hook (azure.yaml): the Microsoft.App provider for VNet mode (never stops azd up), then
# the documents' resource group (stops azd up when it cannot make sure of it).
set -u
here=$(dirname "$0")
sh "$here/register-microsoft-app.sh"
sh "$here/destination-group.sh"
