// Log Analytics + Application Insights (local auth off: telemetry is accepted only from Entra ID
// identities holding Monitoring Metrics Publisher), and the alert on the receiver's ERROR records.
param logAnalyticsName string
param applicationInsightsName string
param location string
param tags object = {}
@description('Principal (object) id of the managed identity the app runs as.')
param principalId string
param retentionInDays int = 30
@description('E-mail told when the alert fires; empty: no action group.')
param alertEmail string = ''

var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'

// Any ERROR (severityLevel 3) or CRITICAL (4) record logged by the receiver's own code: a final copy
// failure (a link that expired or a source that is gone, a copy still pending on its last queue
// delivery), a misconfiguration, an unexpected exception. Records forwarded by the Functions host
// carry Category "Function.<name>.User"; records exported by the app itself through OpenTelemetry
// carry no Category. The host's own "Executed ... (Failed)" records (Category "Function.<name>"),
// written on every retry of a still-running copy, are left out: only final outcomes alert.
var errorQuery = '''
traces
| where severityLevel >= 3
| extend category = tostring(customDimensions.Category)
| where isempty(category) or category endswith ".User"
| project timestamp, operation_Name, message
'''

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
    features: {
      disableLocalAuth: true
    }
  }
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: applicationInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    DisableLocalAuth: true
  }
}

resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, principalId, monitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: 'ag-${applicationInsightsName}'
  location: 'Global'
  tags: tags
  properties: {
    groupShortName: 'sd-receiver'
    enabled: true
    emailReceivers: [
      {
        name: 'operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

resource errorAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-${applicationInsightsName}-errors'
  location: location
  tags: tags
  properties: {
    displayName: 'SmartDocumentor receiver: ERROR logged'
    description: 'The receiver logged an ERROR: a document was not stored for good (its message names taskId, workspaceId and blob: export it again), or a setting or role is wrong, or a bug. See the message in Application Insights (traces).'
    severity: 1
    enabled: true
    scopes: [
      applicationInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    criteria: {
      allOf: [
        {
          query: errorQuery
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: empty(alertEmail) ? [] : [
        actionGroup.id
      ]
    }
  }
}

output applicationInsightsName string = applicationInsights.name
output applicationInsightsId string = applicationInsights.id
output alertQuery string = errorQuery
