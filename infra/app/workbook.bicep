// The operator's dashboard: an Azure Monitor workbook on Application Insights. Its queries are the
// files in queries/ (the same text docs/operations.md shows and tests/test_queries.py checks).
param location string
param tags object = {}
@description('Resource id of the Application Insights component the queries read.')
param applicationInsightsId string
param displayName string = 'SmartDocumentor receiver'

var kql = {
  deliveriesPerHour: loadTextContent('queries/deliveries-per-hour.kql')
  deliveryDuration: loadTextContent('queries/delivery-duration.kql')
  finalFailures: loadTextContent('queries/final-failures.kql')
  pendingByAge: loadTextContent('queries/pending-by-age.kql')
  pendingOverAnHour: loadTextContent('queries/pending-over-an-hour.kql')
  reconciliationGauges: loadTextContent('queries/reconciliation-gauges.kql')
  reconciliationLastRun: loadTextContent('queries/reconciliation-last-run.kql')
  taskLookup: loadTextContent('queries/task-lookup.kql')
}

var content = {
  version: 'Notebook/1.0'
  items: [
    {
      type: 1
      name: 'intro'
      content: {
        json: '## SmartDocumentor receiver\nOne record per delivery, verification and reconciliation (docs/operations.md). Storage is authoritative: `python -m ops pending` and `python -m ops failed` answer from the manifests themselves.'
      }
    }
    {
      type: 3
      name: 'deliveries-per-hour'
      content: {
        version: 'KqlItem/1.0'
        title: 'Deliveries per hour by outcome (2 days)'
        query: kql.deliveriesPerHour
        queryType: 0
        resourceType: 'microsoft.insights/components'
        visualization: 'timechart'
        size: 0
      }
    }
    {
      type: 3
      name: 'delivery-duration'
      content: {
        version: 'KqlItem/1.0'
        title: 'Delivery duration p50 / p95 (ms) and storage requests per delivery'
        query: kql.deliveryDuration
        queryType: 0
        resourceType: 'microsoft.insights/components'
        visualization: 'timechart'
        size: 0
      }
    }
    {
      type: 3
      name: 'final-failures'
      content: {
        version: 'KqlItem/1.0'
        title: 'Final failures (7 days): export these documents again, or act on the reason'
        query: kql.finalFailures
        queryType: 0
        resourceType: 'microsoft.insights/components'
        visualization: 'table'
        size: 0
      }
    }
    {
      type: 3
      name: 'pending-by-age'
      content: {
        version: 'KqlItem/1.0'
        title: 'Deliveries that sent a copy and are not settled, by age'
        query: kql.pendingByAge
        queryType: 0
        resourceType: 'microsoft.insights/components'
        visualization: 'barchart'
        size: 0
      }
    }
    {
      type: 3
      name: 'pending-over-an-hour'
      content: {
        version: 'KqlItem/1.0'
        title: 'Not settled an hour after the copy was sent'
        query: kql.pendingOverAnHour
        queryType: 0
        resourceType: 'microsoft.insights/components'
        visualization: 'table'
        size: 0
      }
    }
    {
      type: 3
      name: 'reconciliation-last-run'
      content: {
        version: 'KqlItem/1.0'
        title: 'Last reconciliation run that completed (its summary), and the last that failed (what to check)'
        query: kql.reconciliationLastRun
        queryType: 0
        resourceType: 'microsoft.insights/components'
        visualization: 'table'
        size: 0
      }
    }
    {
      type: 3
      name: 'poison-depth'
      content: {
        version: 'KqlItem/1.0'
        title: 'Poison queue depth and oldest pending delivery (minutes), per reconciliation run'
        query: kql.reconciliationGauges
        queryType: 0
        resourceType: 'microsoft.insights/components'
        visualization: 'timechart'
        size: 0
      }
    }
    {
      type: 9
      name: 'task-parameter'
      content: {
        version: 'KqlParameterItem/1.0'
        parameters: [
          {
            id: 'a8f3c2d1-5b6e-4f70-9a1b-2c3d4e5f6a7b'
            version: 'KqlParameterItem/1.0'
            name: 'taskId'
            label: 'taskId'
            type: 1
            value: ''
          }
        ]
        style: 'pills'
        queryType: 0
        resourceType: 'microsoft.insights/components'
      }
    }
    {
      type: 3
      name: 'task-lookup'
      conditionalVisibility: {
        parameterName: 'taskId'
        comparison: 'isNotEqualTo'
        value: ''
      }
      content: {
        version: 'KqlItem/1.0'
        title: 'Everything recorded for task {taskId}'
        query: kql.taskLookup
        queryType: 0
        resourceType: 'microsoft.insights/components'
        visualization: 'table'
        size: 0
      }
    }
  ]
  fallbackResourceIds: [
    applicationInsightsId
  ]
  '$schema': 'https://github.com/Microsoft/Application-Insights-Workbooks/blob/master/schema/workbook.json'
}

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, applicationInsightsId, 'smartdocumentor-receiver')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    sourceId: applicationInsightsId
    serializedData: string(content)
    version: 'Notebook/1.0'
  }
}

output id string = workbook.id
