{{/* Names and labels shared by every template. */}}

{{- define "nim-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: the release name when it already contains the chart name. */}}
{{- define "nim-agent.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "nim-agent.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "nim-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nim-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
Standard labels. app.kubernetes.io/managed-by stays Helm: the connector selects the NIM pods it
owns by app.kubernetes.io/managed-by=nim-agent, and must never select (and reap) itself.
*/}}
{{- define "nim-agent.labels" -}}
{{ include "nim-agent.selectorLabels" . }}
app.kubernetes.io/component: connector
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "nim-agent.chart" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "nim-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "nim-agent.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "nim-agent.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* In-cluster DNS name of the connector Service, as flytepropeller dials it. */}}
{{- define "nim-agent.endpoint" -}}
{{- printf "dns:///%s.%s.svc.cluster.local:%v" (include "nim-agent.fullname" .) .Release.Namespace .Values.ports.containerPort -}}
{{- end -}}

{{/* Name of the RBAC objects: prefixed by the release namespace, so two releases never collide. */}}
{{- define "nim-agent.rbacName" -}}
{{- printf "%s-%s" .Release.Namespace (include "nim-agent.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "nim-agent.pdbEnabled" -}}
{{- if kindIs "bool" .Values.podDisruptionBudget.enabled -}}
{{- .Values.podDisruptionBudget.enabled -}}
{{- else -}}
{{- gt (int .Values.replicaCount) 1 -}}
{{- end -}}
{{- end -}}

{{/* The RBAC rules, exactly what nim_agent/kube.py calls. No Secrets, no wildcards. */}}
{{- define "nim-agent.rbacRules" -}}
- apiGroups: [""]
  resources: [pods]
  verbs: [create, get, list, watch, delete, patch]
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
- apiGroups: [""]
  resources: [services]
  verbs: [create, get, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [list]
{{- if eq .Values.settings.servingCheck "proxy" }}
- apiGroups: [""]
  resources: [pods/proxy]
  verbs: [get]
{{- end }}
{{- end -}}
