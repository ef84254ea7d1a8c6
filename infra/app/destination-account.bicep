// A new destination account for the customer's documents, when no existing one is named.
// Hierarchical namespace stays off: blob index tags (the receiver's queryable fields) are not
// supported on ADLS Gen2 accounts.
param name string
param location string
param tags object = {}
param privateNetworking bool = false
@description('Replication of the new account: geo-redundant by default (it keeps the documents); a region without a paired region needs Standard_ZRS or Standard_LRS.')
param skuName string = 'Standard_GRS'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    isHnsEnabled: false
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
      bypass: 'AzureServices'
      defaultAction: privateNetworking ? 'Deny' : 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    // Deleted or overwritten documents can be restored for a week.
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

output id string = account.id
output name string = account.name
