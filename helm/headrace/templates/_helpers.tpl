{{/*
Names, labels and small computed values shared by the templates.
*/}}

{{- define "headrace.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every resource name: <release>-headrace, or just <release> when the
release name already contains the chart name (helm install headrace ...).
*/}}
{{- define "headrace.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "headrace.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object. The workers' pods (made by the operator) carry
app.kubernetes.io/name=headrace too, with app.kubernetes.io/instance set to
the Dataflow's name; the operator's own objects are told apart by
app.kubernetes.io/component.
*/}}
{{- define "headrace.labels" -}}
helm.sh/chart: {{ include "headrace.chart" . }}
{{ include "headrace.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: headrace
{{- end }}

{{- define "headrace.selectorLabels" -}}
app.kubernetes.io/name: {{ include "headrace.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "headrace.operator.selectorLabels" -}}
{{ include "headrace.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "headrace.operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.operator.create }}
{{- default (printf "%s-operator" (include "headrace.fullname" .)) .Values.serviceAccount.operator.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.operator.name }}
{{- end }}
{{- end }}

{{- define "headrace.worker.serviceAccountName" -}}
{{- default (printf "%s-worker" (include "headrace.fullname" .)) .Values.serviceAccount.worker.name }}
{{- end }}

{{- define "headrace.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Namespaces that get a worker ServiceAccount: the release's, every watched one
and any listed in serviceAccount.worker.namespaces, each once.
*/}}
{{- define "headrace.worker.namespaces" -}}
{{- $all := list .Release.Namespace }}
{{- range concat .Values.watchNamespaces .Values.serviceAccount.worker.namespaces }}
{{- $all = append $all . }}
{{- end }}
{{- $all | uniq | toJson }}
{{- end }}

{{/* The operator's metrics Service name; the OperatorDown alert's job label. */}}
{{- define "headrace.operator.serviceName" -}}
{{- printf "%s-operator" (include "headrace.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The console's Service (and Ingress) name. */}}
{{- define "headrace.console.serviceName" -}}
{{- printf "%s-console" (include "headrace.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The leader election Lease (in the release namespace). */}}
{{- define "headrace.operator.leaseName" -}}
{{- default (printf "%s-operator" (include "headrace.fullname" .)) .Values.operator.leaderElection.leaseName | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "headrace.redis.fullname" -}}
{{- printf "%s-redis" (include "headrace.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Namespace of the dashboards' ConfigMaps (the Grafana sidecar's). */}}
{{- define "headrace.dashboards.namespace" -}}
{{- default .Release.Namespace .Values.dashboards.namespace }}
{{- end }}

{{/*
What the operator may do in a namespace it manages. No pods/exec, no secret
listing (only `get` of the Secret a Dataflow names for its Redis URL), no
write access to anything it does not own.
*/ -}}
{{- define "headrace.operator.namespacedRules" -}}
- apiGroups: ["headrace.dev"]
  resources: ["dataflows"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["headrace.dev"]
  resources: ["dataflows/status", "dataflows/scale"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  # create: only as a server-side dry run (dryRun=All), to check a pod template
  # before the StatefulSet uses it; the StatefulSet controller makes the pods.
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  # get: spec.recovery.secretRef; create: each Dataflow's mesh Secret (never read back
  # or changed by the operator; it goes with its Dataflow).
  verbs: ["get", "create"]
{{- if .Values.operator.manageDataflowPodMonitors }}
- apiGroups: ["monitoring.coreos.com"]
  resources: ["podmonitors"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
{{- end }}
{{- end }}

{{/* kopf scans CustomResourceDefinitions, which are cluster-scoped. */ -}}
{{- define "headrace.operator.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/* Seconds in a duration of one unit: "90s", "15m", "2h". */}}
{{- define "headrace.seconds" -}}
{{- $d := toString . }}
{{- if hasSuffix "h" $d }}{{ mul (trimSuffix "h" $d | atoi) 3600 }}
{{- else if hasSuffix "m" $d }}{{ mul (trimSuffix "m" $d | atoi) 60 }}
{{- else }}{{ trimSuffix "s" $d | atoi }}
{{- end }}
{{- end }}
