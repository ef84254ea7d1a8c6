// The destination container and the app's only role on the customer's account: Storage Blob Data
// Owner scoped to that one container. Owner, because writing blob index tags needs
// Microsoft.Storage/storageAccounts/blobServices/containers/blobs/tags/write, which Storage Blob Data
// Contributor lacks; the container scope keeps every other container of the account out of reach.
// Deployed into the destination account's resource group (the account may already exist there).
param accountName string
param containerName string
@description('Principal (object) id of the managed identity the app runs as.')
param principalId string

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

// DESTINATION_ACCOUNT_URL: https://<account>.blob.core.windows.net (the receiver drops a trailing slash).
output accountUrl string = account.properties.primaryEndpoints.blob
output containerUrl string = '${account.properties.primaryEndpoints.blob}${containerName}'
output containerId string = container.id
