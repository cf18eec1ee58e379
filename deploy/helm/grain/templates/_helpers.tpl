{{/* Chart name, overridable. */}}
{{- define "grain.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object name: the release name, suffixed with the chart name unless it already has it. */}}
{{- define "grain.fullname" -}}
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

{{- define "grain.selectorLabels" -}}
app.kubernetes.io/name: {{ include "grain.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{- define "grain.labels" -}}
{{ include "grain.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The Secret holding GRAIN_API_KEYS, or "" when the API is open. */}}
{{- define "grain.apiKeysSecret" -}}
{{- if .Values.apiKeys.existingSecret }}
{{- .Values.apiKeys.existingSecret }}
{{- else if .Values.apiKeys.keys }}
{{- include "grain.fullname" . }}-api-keys
{{- end }}
{{- end }}

{{/* SIGTERM comes after preStop; the drain then needs its full timeout, plus a margin. */}}
{{- define "grain.terminationGracePeriodSeconds" -}}
{{- add (int .Values.server.preStopSleepSeconds) (int .Values.server.drainTimeoutSeconds) 10 }}
{{- end }}
