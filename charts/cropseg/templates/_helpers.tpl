{{/* Chart name, truncated to 63 characters (DNS label). */}}
{{- define "cropseg.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name, at most 63 characters. */}}
{{- define "cropseg.fullname" -}}
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

{{/* Name of one component's objects: <fullname>-<component>, at most 63 characters. */}}
{{- define "cropseg.componentName" -}}
{{- printf "%s-%s" (include "cropseg.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cropseg.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select a component's pods (never change on upgrade). */}}
{{- define "cropseg.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cropseg.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Every object's labels. */}}
{{- define "cropseg.labels" -}}
helm.sh/chart: {{ include "cropseg.chart" .root }}
{{ include "cropseg.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: cropseg
{{- end }}

{{/* Image of a component: its full `reference` when set (Okteto passes built images so),
     else registry/repository:tag with the tag defaulting to the app version. */}}
{{- define "cropseg.image" -}}
{{- if .image.reference }}{{ .image.reference }}{{ else -}}
{{- $registry := .root.Values.image.registry -}}
{{- $tag := default .root.Chart.AppVersion .image.tag -}}
{{- if $registry }}{{ printf "%s/%s:%s" $registry .image.repository $tag }}{{ else }}{{ printf "%s:%s" .image.repository $tag }}{{ end }}
{{- end }}
{{- end }}

{{/* Restricted Pod Security Standard: pod level. */}}
{{- define "cropseg.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Restricted Pod Security Standard: container level. */}}
{{- define "cropseg.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Name of the Secret holding the API token. */}}
{{- define "cropseg.tokenSecret" -}}
{{- default (include "cropseg.componentName" (dict "root" . "component" "api-token")) .Values.apiToken.existingSecret }}
{{- end }}

{{- define "cropseg.tokenEnabled" -}}
{{- if or .Values.apiToken.value .Values.apiToken.existingSecret }}true{{ end }}
{{- end }}

{{/* The shared volume's claim name. */}}
{{- define "cropseg.claimName" -}}
{{- default (include "cropseg.componentName" (dict "root" . "component" "data")) .Values.persistence.existingClaim }}
{{- end }}

{{/* Volumes every pod with the shared data mounts: the claim and an emptyDir /tmp. */}}
{{- define "cropseg.dataVolumes" -}}
- name: data
  {{- if .Values.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "cropseg.claimName" . }}
  {{- else }}
  emptyDir: {}
  {{- end }}
- name: tmp
  emptyDir: {}
{{- end }}

{{/* The API token as an environment variable named by `name`, when one is configured. */}}
{{- define "cropseg.tokenEnv" -}}
{{- if include "cropseg.tokenEnabled" .root }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "cropseg.tokenSecret" .root }}
      key: {{ .root.Values.apiToken.existingSecretKey }}
{{- end }}
{{- end }}
