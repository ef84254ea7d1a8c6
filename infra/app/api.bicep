// The Flex Consumption plan and the function app (Python 3.12), running as the user-assigned identity.
param name string
param planName string
param location string
param tags object = {}
@description('Resource id of the user-assigned identity.')
param identityId string
@description('Client id of the user-assigned identity (for the host, DefaultAzureCredential and telemetry).')
param identityClientId string
param hostStorageBlobEndpoint string
param hostStorageQueueEndpoint string
param deploymentContainerName string
param applicationInsightsName string
param instanceMemoryMB int = 512
param maximumInstanceCount int = 40
param httpPerInstanceConcurrency int = 16
param alwaysReadyHttpInstances int = 0
@description('Subnet for VNet integration (delegated to Microsoft.App/environments); empty: none.')
param subnetId string = ''
@description('The settings the receiver reads (main.bicep, receiverSettings).')
param appSettings object

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// The Functions host reaches its storage with the identity: AzureWebJobsStorage itself is never set.
// function_app.py's queue bindings use connection="AzureWebJobsStorage", so these settings serve them too.
var hostSettings = {
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  AzureWebJobsStorage__blobServiceUri: hostStorageBlobEndpoint
  AzureWebJobsStorage__queueServiceUri: hostStorageQueueEndpoint
  // DefaultAzureCredential (the receiver's DESTINATION_ACCOUNT_URL client) picks the user-assigned identity by this.
  AZURE_CLIENT_ID: identityClientId
  // Carries no credential (local auth is off: no instrumentation key is accepted); ingestion authenticates with the identity.
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  // Keep every span: the distro's default is a rate limit of a few traces a second (docs/operations.md).
  OTEL_TRACES_SAMPLER: 'microsoft.fixed_percentage'
  OTEL_TRACES_SAMPLER_ARG: '1.0'
  // With host.json "telemetryMode": "OpenTelemetry", the Python worker configures Azure Monitor itself
  // (azure-monitor-opentelemetry in requirements.txt); the app only records through the OpenTelemetry API.
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225:Flex Consumption zone redundancy is offered in some regions only; an outage of one zone delays deliveries, and SmartDocumentor keeps a document in To Review until a 2xx, so nothing is lost.
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222:SmartDocumentor (a SaaS on the internet) must reach the webhook; every call needs the function key. Put Front Door or API Management in front to restrict it further.
  // checkov:skip=CKV_AZURE_17:The sender authenticates with the function key; SmartDocumentor sends no client certificate.
  // checkov:skip=CKV_AZURE_212:Flex Consumption scales instances on demand; alwaysReadyHttpInstances keeps warm ones (0 by default, to cost nothing when idle).
  // checkov:skip=CKV_AZURE_213:App Service health check (instance eviction) is not offered on Flex Consumption; /api/health is there for operators and monitors.
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': 'api'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    virtualNetworkSubnetId: empty(subnetId) ? null : subnetId
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${hostStorageBlobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
        alwaysReady: (alwaysReadyHttpInstances == 0) ? [] : [
          {
            name: 'http'
            instanceCount: alwaysReadyHttpInstances
          }
        ]
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'python'
        version: '3.12'
      }
    }
  }
}

resource settings 'Microsoft.Web/sites/config@2024-04-01' = {
  // These checks read a site's web config (siteConfig); this resource holds only app settings.
  // checkov:skip=CKV_AZURE_13:Not a web config; callers authenticate with the function key (App Service Authentication would turn SmartDocumentor away).
  // checkov:skip=CKV_AZURE_63:Not a web config; HTTP logs of a Linux Flex Consumption app go to Application Insights (requests).
  // checkov:skip=CKV_AZURE_65:Not a web config; detailed error pages are off by default and the receiver answers JSON only.
  // checkov:skip=CKV_AZURE_66:Not a web config; failed request tracing is a Windows IIS feature.
  // checkov:skip=CKV_AZURE_80:Not a web config; the app is Python 3.12, no .NET Framework.
  // checkov:skip=CKV_AZURE_88:Not a web config; Flex Consumption runs from the deployment container, not Azure Files.
  // checkov:skip=CKV_AZURE_222:Not a web config; public network access is decided on the site (see above).
  parent: functionApp
  name: 'appsettings'
  properties: union(appSettings, hostSettings)
}

output name string = functionApp.name
output defaultHostName string = functionApp.properties.defaultHostName
