{{- define "xqueue.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Object name prefix; short enough that "<prefix>-admin-account" fits in 63 characters. */}}
{{- define "xqueue.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* "repository:tag" of one image block; the tag defaults to the chart's appVersion. */}}
{{- define "xqueue.image" -}}
{{- $image := index . 0 -}}{{- $root := index . 1 -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}

{{- define "xqueue.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "xqueue.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: xqueue-k8s
{{- end -}}

{{/* Selector labels of one component: include "xqueue.selector" (list . "server") */}}
{{- define "xqueue.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "xqueue.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "xqueue.serverUrl" -}}
{{- printf "http://%s-server.%s.svc:%d" (include "xqueue.fullname" .) .Release.Namespace (int .Values.server.port) -}}
{{- end -}}

{{/*
"true" when the release runs its own PostgreSQL: postgresql.enabled (the default) and no external
database configured. Setting database.existingSecret or database.url is enough to switch it off.
*/}}
{{- define "xqueue.inChartPostgresql" -}}
{{- if and .Values.server.enabled .Values.postgresql.enabled (not .Values.database.existingSecret) (not .Values.database.url) -}}true{{- end -}}
{{- end -}}

{{/* The Secret and key holding the database URL, whichever way it is configured. */}}
{{- define "xqueue.databaseSecretName" -}}
{{- if .Values.database.existingSecret -}}
{{- .Values.database.existingSecret -}}
{{- else -}}
{{- printf "%s-database" (include "xqueue.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "xqueue.databaseSecretKey" -}}
{{- if .Values.database.existingSecret -}}{{ .Values.database.existingSecretKey }}{{- else -}}url{{- end -}}
{{- end -}}

{{- define "xqueue.databaseUrlEnv" -}}
- name: XQUEUE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "xqueue.databaseSecretName" . }}
      key: {{ include "xqueue.databaseSecretKey" . }}
{{- end -}}

{{- define "xqueue.adminSecretName" -}}
{{- default (printf "%s-admin" (include "xqueue.fullname" .)) .Values.admin.existingSecret -}}
{{- end -}}

{{- define "xqueue.adminPasswordKey" -}}
{{- if .Values.admin.existingSecret -}}{{ .Values.admin.passwordKey }}{{- else -}}password{{- end -}}
{{- end -}}

{{/*
A password that stays the same across upgrades: the value already stored in the named Secret
(looked up in the cluster), else a new random one. `helm template` cannot look up, so it always
renders a new one. Call: include "xqueue.keptPassword" (list . "secret-name" "key")
*/}}
{{- define "xqueue.keptPassword" -}}
{{- $root := index . 0 -}}
{{- $existing := lookup "v1" "Secret" $root.Release.Namespace (index . 1) -}}
{{- if and $existing $existing.data (hasKey $existing.data (index . 2)) -}}
{{- index $existing.data (index . 2) | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}

{{/* Egress rule to cluster DNS. */}}
{{- define "xqueue.dnsEgress" -}}
- to:
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: {{ .Values.clusterDNS.namespace }}}
      {{- with .Values.clusterDNS.podLabels }}
      podSelector:
        matchLabels:
          {{- toYaml . | nindent 10 }}
      {{- end }}
  ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
{{- end -}}

{{/* Egress rule to the database: the in-chart PostgreSQL pod, or any address on the configured port. */}}
{{- define "xqueue.databaseEgress" -}}
{{- if include "xqueue.inChartPostgresql" . -}}
- to:
    - podSelector:
        matchLabels:
          {{- include "xqueue.selector" (list . "postgresql") | nindent 10 }}
  ports:
    - {protocol: TCP, port: 5432}
{{- else -}}
- ports:
    - {protocol: TCP, port: {{ .Values.networkPolicy.databasePort }}}
{{- end -}}
{{- end -}}

{{/* The settings must name one database, and the server's replicas must share its files. */}}
{{- define "xqueue.validate" -}}
{{- if and .Values.server.enabled .Values.database.existingSecret .Values.database.url -}}
{{- fail "\n\nxqueue: set database.existingSecret or database.url, not both\n" -}}
{{- end -}}
{{- if and .Values.server.enabled (not .Values.postgresql.enabled) (not .Values.database.existingSecret) (not .Values.database.url) -}}
{{- fail "\n\nxqueue: postgresql.enabled=false needs an external database:\n  --set database.existingSecret=NAME   a Secret with the PostgreSQL URL (production)\n  --set database.url=postgresql://...   the URL itself\n" -}}
{{- end -}}
{{- if and .Values.server.enabled (gt (int .Values.server.replicas) 1) (eq .Values.server.storage.type "local") (not .Values.server.storage.existingClaim) -}}
{{- fail "\n\nxqueue: server.replicas > 1 needs file storage every replica sees: set server.storage.type=s3, or server.storage.existingClaim to a ReadWriteMany PersistentVolumeClaim\n" -}}
{{- end -}}
{{- if and .Values.server.enabled (eq .Values.server.storage.type "s3") (not .Values.server.storage.s3.bucket) -}}
{{- fail "\n\nxqueue: server.storage.type=s3 needs server.storage.s3.bucket\n" -}}
{{- end -}}
{{- if and .Values.operator.enabled (not .Values.server.enabled) (not .Values.operator.xqueueUrl) -}}
{{- fail "\n\nxqueue: with server.enabled=false, set operator.xqueueUrl to the XQueue server the graders use\n" -}}
{{- end -}}
{{- end -}}
