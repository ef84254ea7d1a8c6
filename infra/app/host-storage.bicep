// The Functions host storage: host state and function keys (blob), the verification queue and its
// poison queue, and the deployment package container. Shared keys are off: the app reaches it with
// its managed identity only (AzureWebJobsStorage__* settings in api.bicep).
param name string
param location string
param tags object = {}
param deploymentContainerName string
@description('Principal (object) id of the managed identity the app runs as.')
param principalId string
@description('Object id of the person running `azd up` (AZURE_PRINCIPAL_ID), for `python -m ops replay-poison` and the postprovision wait for roles (infra/hooks/wait-for-roles.sh); empty: no role.')
param operatorPrincipalId string = ''
param privateNetworking bool = false

// Queue names used by function_app.py; the host moves a message that failed maxDequeueCount times to <queue>-poison.
var verificationQueueName = 'smartdocumentor-copy-verifications'

var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageBlobDataReader: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
}

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_206:Host state, keys and queue messages are this app's working data, not the documents: locally redundant like the Functions templates; the documents live in the destination account.
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    dnsEndpointType: 'Standard'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: privateNetworking ? 'Disabled' : 'Enabled'
    networkAcls: {
      // checkov:skip=CKV_AZURE_35:Without vnetEnabled a Flex Consumption app has no fixed outbound address a firewall rule could allow, so the default stays Allow and only Entra ID identities with a role get in (shared keys off). vnetEnabled=true denies by default and disables public access.
      // checkov:skip=CKV_AZURE_36:In VNet mode no Azure service but the app (through its private endpoints) needs this account, so no trusted-service exception, as in Microsoft's Flex Consumption samples; without VNet mode the default action is Allow and bypass changes nothing.
      bypass: privateNetworking ? 'None' : 'AzureServices'
      defaultAction: privateNetworking ? 'Deny' : 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource verificationQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: verificationQueueName
}

resource poisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: '${verificationQueueName}-poison'
}

// Blob: the host's own containers (timer schedule and singleton leases, function keys) and the
// deployment package. The account is this app's alone.
resource blobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, principalId, roles.storageBlobDataOwner)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Queue: the verification queue (output binding and trigger) and its -poison queue.
resource queueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, principalId, roles.storageQueueDataContributor)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// The operator's own role, for `python -m ops replay-poison` (moves messages from the -poison queue
// back). No principalType: a user, or a service principal in CI.
resource operatorQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(account.id, operatorPrincipalId, roles.storageQueueDataContributor)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: operatorPrincipalId
  }
}

// The operator's read-only role on the deployment package container, and nothing else of the host's blobs:
// the postprovision hook (infra/hooks/wait-for-roles.sh) lists this container until the role is in force,
// so `azd deploy` does not start while the roles this deployment assigned on the account still propagate
// (a first deploy with shared keys off could otherwise get 403). No principalType, as above.
resource operatorPackageReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(deploymentContainer.id, operatorPrincipalId, roles.storageBlobDataReader)
  scope: deploymentContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataReader)
    principalId: operatorPrincipalId
  }
}

output id string = account.id
output name string = account.name
output blobEndpoint string = account.properties.primaryEndpoints.blob
output queueEndpoint string = account.properties.primaryEndpoints.queue
