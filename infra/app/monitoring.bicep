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

// Any ERROR (severityLevel 3) or CRITICAL (4) record of the receiver's own code: a final copy failure
// (a link that expired, a source that is gone, a copy still pending on its last queue try), messages
// waiting in the poison queue, a misconfiguration, an unexpected exception. The filter is on the
// receiver's own attributes: the exporter names each record's Python logger in
// customDimensions.logger_name ("receiver", "receiver.verification", ...), and every record the
// receiver's telemetry emits for an operator carries receiver.finalFailure. The host's own records
// (customDimensions.CategoryName) and other libraries' loggers are left out. One source: the query
// file is also in docs/operations.md and checked by tests/test_queries.py.
var errorQuery = loadTextContent('queries/alert-errors.kql')
// The reconciliation's heartbeat: its completed runs in the last 25 minutes (two 10-minute schedules
// and the 5-minute functionTimeout of a slow run). No row: nothing checks unfinished copies.
var heartbeatQuery = loadTextContent('queries/reconciliation-heartbeat.kql')

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

// The window: a standing condition must stay fired. The poison queue's ERROR comes once per reconciliation run
// (RECONCILE_SCHEDULE, every 10 minutes), at the run's end, so two of them can be up to 15 minutes
// apart (10 minutes plus a slow run's 5-minute functionTimeout) and a late ingestion adds more. A
// 5-minute window held no record every other evaluation: the alert fired and resolved each run.
// 30 minutes (the allowed window sizes are 5, 10, 15, 30, 45 minutes, ...) always holds a run's
// record, with room for ingestion delay; evaluated every 5 minutes, a new ERROR still alerts within
// 5 minutes. The price: the alert resolves 30 minutes after the last ERROR. tests/test_queries.py
// replays two runs' records against it.
resource errorAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-${applicationInsightsName}-errors'
  location: location
  tags: tags
  properties: {
    displayName: 'SmartDocumentor receiver: ERROR logged'
    description: 'The receiver logged an ERROR: a document was not stored for good (its message names taskId, workspaceId and blob: export it again), messages wait in the poison queue (run python -m ops replay-poison --dry-run), a reconciliation run failed (its message names the role, network rule or account to check), an operator failed a delivery, or a setting or role is wrong, or a bug. See the message in Application Insights (traces). Fires within 5 minutes; resolves 30 minutes after the last ERROR.'
    severity: 1
    enabled: true
    scopes: [
      applicationInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT30M'
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

// No reconciliation run completed for twice its schedule: the safety net is not running (the timer
// stopped, every run fails or is killed, the app is down or cannot start). The query looks back 25
// minutes itself (two 10-minute schedules and a slow run's 5 minutes); the window only has to hold
// that (windows come in 5, 10, 15, 30, ... minutes). Evaluated every 10 minutes, once per schedule;
// zero rows is a count of 0, which fires. The failed runs themselves are ERRORs on the error alert.
resource heartbeatAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-${applicationInsightsName}-reconciliation-heartbeat'
  location: location
  tags: tags
  properties: {
    displayName: 'SmartDocumentor receiver: no reconciliation run completed'
    description: 'No reconciliation run completed in the last 25 minutes (it runs every 10): nothing checks unfinished copies or the poison queue. Look for the ERROR records of failed runs (outcome failed: they name the role, network rule or account to check), then at the function app (is it running, does reconcile_deliveries run). docs/operations.md, "The reconciliation heartbeat".'
    severity: 2
    enabled: true
    scopes: [
      applicationInsights.id
    ]
    evaluationFrequency: 'PT10M'
    windowSize: 'PT30M'
    criteria: {
      allOf: [
        {
          query: heartbeatQuery
          timeAggregation: 'Count'
          operator: 'LessThan'
          threshold: 1
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
