// The destination container and the app's only role on the customer's account: Storage Blob Data
// Owner scoped to that one container. Owner, because writing blob index tags needs
// Microsoft.Storage/storageAccounts/blobServices/containers/blobs/tags/write, which Storage Blob Data
// Contributor lacks; the container scope keeps every other container of the account out of reach.
// Deployed into the destination account's resource group (the account may already exist there).
param accountName string
param containerName string
@description('Principal (object) id of the managed identity the app runs as.')
param principalId string
@description('Object id of the person running `azd up` (AZURE_PRINCIPAL_ID), for `python -m ops`; empty: no role.')
param operatorPrincipalId string = ''
@description('Lock the account against deletion (main.bicep: protectDestinationAccount, off by default).')
param lockAccount bool = false

var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: accountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: account
  name: 'default'
}

// Created here (ARM, no data-plane rights needed) because the role below is scoped to it; the app
// could not create it with a container-scoped role.
resource container 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: containerName
  properties: {
    publicAccess: 'None'
  }
}

resource containerOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(container.id, principalId, storageBlobDataOwner)
  scope: container
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwner)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// The operator's own role, for `python -m ops` (find, check, reconcile, export: reads and writes blobs,
// their index tags and the manifests in this container only). No principalType: azd's principal is a
// user, or a service principal in CI; leaving the type out works for both.
resource operatorContainerOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(container.id, operatorPrincipalId, storageBlobDataOwner)
  scope: container
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwner)
    principalId: operatorPrincipalId
  }
}

// Optional: the account already lives in a resource group `azd down` leaves alone (main.bicep); the lock
// guards it against deleting it by hand by mistake (docs/teardown.md). Deleting blobs and containers is
// data-plane work a management lock does not stop: soft delete (destination-account.bicep) covers that.
var lockName = 'keep-archived-documents'
resource deleteLock 'Microsoft.Authorization/locks@2020-05-01' = if (lockAccount) {
  name: lockName
  scope: account
  properties: {
    level: 'CanNotDelete'
    notes: 'Holds the archived SmartDocumentor documents. To delete it on purpose, run infra/delete-documents.sh, which lists what it deletes and asks first (docs/teardown.md).'
  }
}

// DESTINATION_ACCOUNT_URL: https://<account>.blob.<the cloud's storage suffix>/ (the receiver drops a trailing slash).
output accountUrl string = account.properties.primaryEndpoints.blob
output containerUrl string = '${account.properties.primaryEndpoints.blob}${containerName}'
output containerId string = container.id
output appRoleAssignmentId string = containerOwner.id
output lockName string = lockAccount ? lockName : ''
