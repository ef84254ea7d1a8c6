// SmartDocumentor -> Azure Blob Storage receiver: everything `azd up` creates.
//
// Identity only: no storage account key or SAS is created, read or stored. One
// user-assigned managed identity runs the app; its roles are the least it needs:
//   host storage (this app's own account): Storage Blob Data Owner (host state, function keys,
//     the deployment package) and Storage Queue Data Contributor (the verification queue and
//     its -poison queue); no Table role (no Durable Functions);
//   the customer's destination: Storage Blob Data Owner on the destination CONTAINER only
//     (Owner because index tags need blobs/tags/write, which Contributor lacks);
//   Application Insights: Monitoring Metrics Publisher (Entra ID ingestion; local auth is off).
// The person running `azd up` (principalId, from azd's AZURE_PRINCIPAL_ID) gets, only when azd knows
// them, what `python -m ops` needs: Storage Blob Data Owner on the destination container and Storage
// Queue Data Contributor on the host storage; and Storage Blob Data Reader on the deployment package
// container, which the postprovision hook reads until the new roles are in force (docs/roles.md).
// The documents never live in a resource group this template creates: the destination account (a new
// one, or the existing one named) is deployed into a resource group that exists before the deployment
// (the preprovision hook infra/hooks/destination-group.sh creates rg-<environment>-documents once), so
// `azd down` (azd >= 1.24.1) removes the receiver whole and leaves the documents alone
// (docs/teardown.md). infra/VERIFY.md: the decisions, and what only Azure itself can check.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; it seeds a short unique token used in every resource name.')
param environmentName string

@minLength(1)
@description('Region of every resource. It must offer Flex Consumption with Python 3.12: az functionapp list-flexconsumption-runtimes --location <region> --runtime python')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Resource group to create; empty: rg-<environmentName>.')
param resourceGroupName string = ''

@description('Function app name (also the host name); empty: a generated one.')
param functionAppName string = ''

@description('The Functions host storage account (host state, verification queue, deployment package); empty: a generated name.')
param hostStorageAccountName string = ''

// ---- Flex Consumption scale ----

@allowed([
  512
  2048
  4096
])
@description('Memory of each instance, in MB. 512: the worker peaks at 126 MiB under load (docs/cost.md).')
param instanceMemoryMB int = 512

// 40 is the lowest maximum the Flex Consumption plan page allows (one other page says 1); Microsoft's
// Flex Consumption samples use @minValue(40) too.
@minValue(40)
@maxValue(1000)
@description('Upper bound on instances (40 to 1000).')
param maximumInstanceCount int = 40

@minValue(1)
@maxValue(1000)
@description('Concurrent HTTP deliveries per instance. The function is async and spends a delivery waiting on storage (a few ms of CPU each), so one instance takes many at once.')
param httpPerInstanceConcurrency int = 16

@minValue(0)
@maxValue(20)
@description('Always-ready instances for the HTTP functions (0: scale to zero, pay nothing when idle, accept a cold start; 1: no cold start, billed while idle).')
param alwaysReadyHttpInstances int = 0

// ---- The customer's destination ----

@description('Existing storage account to copy into; empty: create a new one (hierarchical namespace off, so blob index tags work).')
param destinationStorageAccountName string = ''

@description('Resource group of the destination account. It must exist before the deployment (the template never creates it, so `azd down` never deletes it): the preprovision hook creates it for a new account; for an existing account name its group. Empty: rg-<environmentName>-documents.')
param destinationResourceGroupName string = ''

@description('A CanNotDelete lock on the destination account, against deleting it by hand by mistake (docs/teardown.md). Off by default: `azd down` never reaches the documents\' resource group anyway. A lock made before stays until removed (infra/delete-documents.sh removes it after asking).')
param protectDestinationAccount bool = false

@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
@description('Replication of a destination account this template creates (ignored for an existing one): geo-redundant by default; a region without a paired region needs Standard_ZRS or Standard_LRS.')
param destinationStorageSku string = 'Standard_GRS'

// ---- Receiver settings (docs/reference.md, Configuration); defaults equal the receiver's own ----

@minLength(3)
@maxLength(63)
@description('DESTINATION_CONTAINER: created by this template; the app gets Storage Blob Data Owner on it alone.')
param destinationContainer string = 'smartdocumentor'

@minLength(1)
@description('BLOB_NAME_TEMPLATE: placeholders workspaceId taskId taskNumber displayName fileName ext yyyy mm dd.')
param blobNameTemplate string = '{workspaceId}/{taskId}/{fileName}'

// The cloud's own storage suffix (environment().suffixes.storage: the public cloud's, or a sovereign cloud's).
@minLength(1)
@description('ALLOWED_SOURCE_HOSTS: comma-separated host or host:port patterns the file links may point to; default: any blob endpoint of this cloud.')
param allowedSourceHosts string = '*.blob.${environment().suffixes.storage}'

@description('ALLOW_HTTP_SOURCES: true only for local Azurite; keep false in Azure.')
param allowHttpSources bool = false

@minValue(0)
@maxValue(30)
@description('COPY_WAIT_SECONDS: how long a delivery waits for an asynchronous copy before answering 202.')
param copyWaitSeconds int = 20

@minLength(1)
@description('RECONCILE_SCHEDULE: NCRONTAB schedule of the reconciliation.')
param reconcileSchedule string = '0 */10 * * * *'

@minValue(0)
@maxValue(10080)
@description('RECONCILE_AFTER_MINUTES: a pending delivery older than this is reconciled (0: every pending one; at most 10080, a week, as the receiver allows).')
param reconcileAfterMinutes int = 10

@minValue(0)
@maxValue(256)
@description('SYNC_COPY_MAX_MIB: files up to this size are copied synchronously (256 MiB is the service limit; 0: always asynchronous).')
param syncCopyMaxMib int = 256

@description('TAG_FIELDS: payload fields written as blob index tags first.')
param tagFields string = 'taskId,taskNumber,workspaceId'

@description('WRITE_MANIFEST: write <blob name>.json next to each file.')
param writeManifest bool = true

@minValue(1024)
@maxValue(1048576)
@description('MAX_BODY_BYTES: largest webhook body accepted.')
param maxBodyBytes int = 65536

// ---- Operations ----

@description('E-mail address told when the receiver logs an ERROR (final copy failures, misconfiguration, bugs); empty: the alert fires without notifying anyone.')
param alertEmail string = ''

@minValue(30)
@maxValue(730)
@description('Days Log Analytics keeps the logs.')
param logRetentionInDays int = 30

@description('Object id of the person (or service principal) running `azd up`, which azd fills in (AZURE_PRINCIPAL_ID): it gets what `python -m ops` needs, Storage Blob Data Owner on the destination container and Storage Queue Data Contributor on the host storage (replay-poison). Empty: no role for anyone but the app.')
param principalId string = ''

@description('Private networking: VNet integration for the app, and private endpoints (public access off) for the host storage and a destination account this template creates. An existing destination account keeps its own network rules.')
param vnetEnabled bool = false

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var appName = empty(functionAppName) ? 'func-sd-${resourceToken}' : functionAppName
var hostAccountName = empty(hostStorageAccountName) ? 'sthost${resourceToken}' : hostStorageAccountName
var deploymentContainerName = 'app-package-${take(appName, 32)}-${take(toLower(uniqueString(appName, resourceToken)), 7)}'
var createDestinationAccount = empty(destinationStorageAccountName)
var destinationAccountName = createDestinationAccount ? 'stdocs${resourceToken}' : destinationStorageAccountName
// The same default as infra/hooks/destination-group.sh, which creates the group before the deployment.
var destinationRgName = empty(destinationResourceGroupName) ? 'rg-${environmentName}-documents' : destinationResourceGroupName
var webhookFunctionName = 'anonymization_webhook'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: empty(resourceGroupName) ? 'rg-${environmentName}' : resourceGroupName
  location: location
  tags: tags
}

module identity 'app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-sd-${resourceToken}'
    location: location
    tags: tags
  }
}

module network 'app/network.bicep' = if (vnetEnabled) {
  name: 'network'
  scope: rg
  params: {
    name: 'vnet-sd-${resourceToken}'
    location: location
    tags: tags
  }
}

module hostStorage 'app/host-storage.bicep' = {
  name: 'host-storage'
  scope: rg
  params: {
    name: hostAccountName
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    principalId: identity.outputs.principalId
    operatorPrincipalId: principalId
    privateNetworking: vnetEnabled
  }
}

module hostStoragePrivateEndpoints 'app/private-endpoints.bicep' = if (vnetEnabled) {
  name: 'host-storage-private-endpoints'
  scope: rg
  params: {
    location: location
    tags: tags
    storageAccountId: hostStorage.outputs.id
    subnetId: vnetEnabled ? network.outputs.privateEndpointSubnetId : ''
    blobDnsZoneId: vnetEnabled ? network.outputs.blobDnsZoneId : ''
    queueDnsZoneId: vnetEnabled ? network.outputs.queueDnsZoneId : ''
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-sd-${resourceToken}'
    applicationInsightsName: 'appi-sd-${resourceToken}'
    location: location
    tags: tags
    principalId: identity.outputs.principalId
    retentionInDays: logRetentionInDays
    alertEmail: alertEmail
  }
}

// The operator's dashboard (docs/operations.md "Queries"): the same queries as the docs and the alert.
module workbook 'app/workbook.bicep' = {
  name: 'workbook'
  scope: rg
  params: {
    location: location
    tags: tags
    applicationInsightsId: monitoring.outputs.applicationInsightsId
  }
}

// Deployed into the documents' resource group, which exists before the deployment (never declared here).
module destinationAccount 'app/destination-account.bicep' = if (createDestinationAccount) {
  name: 'destination-account'
  scope: resourceGroup(destinationRgName)
  params: {
    name: destinationAccountName
    location: location
    tags: tags
    skuName: destinationStorageSku
    privateNetworking: vnetEnabled
  }
}

module destinationPrivateEndpoint 'app/private-endpoints.bicep' = if (createDestinationAccount && vnetEnabled) {
  name: 'destination-private-endpoint'
  scope: rg
  params: {
    location: location
    tags: tags
    storageAccountId: createDestinationAccount ? destinationAccount.outputs.id : ''
    subnetId: vnetEnabled ? network.outputs.privateEndpointSubnetId : ''
    blobDnsZoneId: vnetEnabled ? network.outputs.blobDnsZoneId : ''
    queueDnsZoneId: ''
  }
}

// The container and the app's one role on the customer's account, in that account's resource group.
module destination 'app/destination-access.bicep' = {
  name: 'destination-access'
  scope: resourceGroup(destinationRgName)
  params: {
    accountName: destinationAccountName
    containerName: destinationContainer
    principalId: identity.outputs.principalId
    operatorPrincipalId: principalId
    lockAccount: protectDestinationAccount
  }
  // The account is named, not referenced: say that it waits for a new one.
  dependsOn: [
    destinationAccount
  ]
}

// Every setting the receiver reads (receiver/settings.py, docs/reference.md "Configuration"). The destination is
// reached with the managed identity (DESTINATION_ACCOUNT_URL); the key-based alternative is never set.
var receiverSettings = {
  DESTINATION_ACCOUNT_URL: destination.outputs.accountUrl
  DESTINATION_CONTAINER: destinationContainer
  BLOB_NAME_TEMPLATE: blobNameTemplate
  ALLOWED_SOURCE_HOSTS: allowedSourceHosts
  ALLOW_HTTP_SOURCES: allowHttpSources ? 'true' : 'false'
  COPY_WAIT_SECONDS: string(copyWaitSeconds)
  RECONCILE_SCHEDULE: reconcileSchedule
  RECONCILE_AFTER_MINUTES: string(reconcileAfterMinutes)
  SYNC_COPY_MAX_MIB: string(syncCopyMaxMib)
  TAG_FIELDS: tagFields
  WRITE_MANIFEST: writeManifest ? 'true' : 'false'
  MAX_BODY_BYTES: string(maxBodyBytes)
}

module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
  params: {
    name: appName
    planName: 'plan-sd-${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    hostStorageBlobEndpoint: hostStorage.outputs.blobEndpoint
    hostStorageQueueEndpoint: hostStorage.outputs.queueEndpoint
    deploymentContainerName: deploymentContainerName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    httpPerInstanceConcurrency: httpPerInstanceConcurrency
    alwaysReadyHttpInstances: alwaysReadyHttpInstances
    subnetId: vnetEnabled ? network.outputs.appSubnetId : ''
    appSettings: receiverSettings
  }
  dependsOn: [
    hostStoragePrivateEndpoints
  ]
}

// azd stores these in .azure/<env>/.env (`azd env get-values`).
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = api.outputs.name
@description('The URL to configure in SmartDocumentor, without its key: append ?code=<key>.')
output WEBHOOK_URL string = 'https://${api.outputs.defaultHostName}/api/smartdocumentor/anonymization'
output HEALTH_URL string = 'https://${api.outputs.defaultHostName}/api/health'
@description('Prints the function key to append to WEBHOOK_URL as ?code=<key>.')
output WEBHOOK_KEY_COMMAND string = 'az functionapp function keys list --resource-group ${rg.name} --name ${api.outputs.name} --function-name ${webhookFunctionName} --query "values(@)[0]" --output tsv'
@description('The host storage account and the deployment package container: the postprovision hook waits until they can be read.')
output HOST_STORAGE_ACCOUNT string = hostStorage.outputs.name
output DEPLOYMENT_CONTAINER string = deploymentContainerName
output DESTINATION_CONTAINER_URL string = destination.outputs.containerUrl
output DESTINATION_STORAGE_ACCOUNT string = destinationAccountName
output DESTINATION_RESOURCE_GROUP string = destinationRgName
@description('The app identity\'s role on the destination container: it lives in the documents\' resource group, which `azd down` leaves alone, so the predown hook deletes it (docs/teardown.md).')
output DESTINATION_ROLE_ASSIGNMENT_ID string = destination.outputs.appRoleAssignmentId
@description('Name of the CanNotDelete lock on the destination account; empty: none.')
output DESTINATION_LOCK_NAME string = destination.outputs.lockName
