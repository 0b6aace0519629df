{{/*
The chart's name, at most 63 characters (a DNS label).
*/}}
{{- define "voxserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: the release name, with the chart's name when
the release name does not already hold it.
*/}}
{{- define "voxserve.fullname" -}}
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

{{- define "voxserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "voxserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "voxserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "voxserve.labels" -}}
helm.sh/chart: {{ include "voxserve.chart" . }}
{{ include "voxserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/component: server
app.kubernetes.io/part-of: voxserve
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "voxserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "voxserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "voxserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
"true" when the pods get a GPU: gpu.enabled, or a GPU limit in resources.limits.
*/}}
{{- define "voxserve.gpu" -}}
{{- $limits := .Values.resources.limits | default dict }}
{{- if or .Values.gpu.enabled (hasKey $limits .Values.gpu.resourceName) }}true{{ end }}
{{- end }}

{{- define "voxserve.preset" -}}
{{- .Values.preset | default (ternary "gpu" "cpu" (eq (include "voxserve.gpu" .) "true")) }}
{{- end }}

{{- define "voxserve.device" -}}
{{- .Values.device | default (ternary "cuda" "cpu" (eq (include "voxserve.gpu" .) "true")) }}
{{- end }}

{{/*
The seconds a pod needs from deletion to exit: preStop sleep, drain, and the margin for
the exit itself. The default grace period, and the least one that may be set.
*/}}
{{- define "voxserve.shutdownSeconds" -}}
{{- add (int .Values.preStopSleepSeconds) (int .Values.drainSeconds) (int .Values.shutdownMarginSeconds) }}
{{- end }}

{{/*
terminationGracePeriodSeconds: computed when unset; fails to render when a set value
would let the kubelet kill the server in the middle of its drain.
*/}}
{{- define "voxserve.terminationGracePeriodSeconds" -}}
{{- $least := int (include "voxserve.shutdownSeconds" .) }}
{{- $set := index .Values "terminationGracePeriodSeconds" }}
{{- if kindIs "invalid" $set }}
{{- $least }}
{{- else if lt (int $set) $least }}
{{- fail (printf "terminationGracePeriodSeconds=%d is too short: it must be at least preStopSleepSeconds (%d) + drainSeconds (%d) + shutdownMarginSeconds (%d) = %d, or the kubelet kills the server in the middle of its drain. Raise it, lower drainSeconds, or leave it unset to have it computed." (int $set) (int .Values.preStopSleepSeconds) (int .Values.drainSeconds) (int .Values.shutdownMarginSeconds) $least) }}
{{- else }}
{{- int $set }}
{{- end }}
{{- end }}

{{/*
The name of the Secret holding the API key file, empty when the API is open.
*/}}
{{- define "voxserve.apiKeySecret" -}}
{{- if and .Values.auth.existingSecret .Values.auth.apiKeys }}
{{- fail "set auth.apiKeys or auth.existingSecret, not both" }}
{{- end }}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.existingSecret }}
{{- else if .Values.auth.apiKeys }}
{{- printf "%s-api-keys" (include "voxserve.fullname" .) }}
{{- end }}
{{- end }}

{{- define "voxserve.apiKeySecretKey" -}}
{{- ternary .Values.auth.existingSecretKey "api-keys" (ne .Values.auth.existingSecret "") }}
{{- end }}

{{- define "voxserve.cacheClaim" -}}
{{- .Values.modelCache.persistence.existingClaim | default (printf "%s-models" (include "voxserve.fullname" .)) }}
{{- end }}

{{/*
The server's settings file. The settings the chart sets through the environment are
refused here: the environment would silently win over the file.
*/}}
{{- define "voxserve.configJson" -}}
{{- $owned := dict "host" "the Service and containerPort" "port" "containerPort" "preset" "preset" "device" "device" "log_format" "logFormat" "drain_seconds" "drainSeconds" "model_cache_dir" "modelCache" "api_keys" "auth.apiKeys" "api_key_file" "auth.existingSecret" }}
{{- range $key := keys $owned | sortAlpha }}
{{- if hasKey $.Values.config $key }}
{{- fail (printf "config.%s is set by the chart: use the value %s instead" $key (get $owned $key)) }}
{{- end }}
{{- end }}
{{- .Values.config | toJson }}
{{- end }}

{{/*
The environment of both the init container and the server: the same settings, so that
`voxserve models pull` fetches what `voxserve serve` will load.
*/}}
{{- define "voxserve.env" -}}
- name: VOXSERVE_HOST
  value: 0.0.0.0
- name: VOXSERVE_PORT
  value: {{ .Values.containerPort | int | quote }}
- name: VOXSERVE_CONFIG
  value: /etc/voxserve/config.json
- name: VOXSERVE_PRESET
  value: {{ include "voxserve.preset" . | quote }}
- name: VOXSERVE_DEVICE
  value: {{ include "voxserve.device" . | quote }}
- name: VOXSERVE_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: VOXSERVE_DRAIN_SECONDS
  value: {{ .Values.drainSeconds | int | quote }}
- name: VOXSERVE_MODEL_CACHE_DIR
  value: /models
- name: HF_HOME
  value: /models/huggingface
{{- if include "voxserve.apiKeySecret" . }}
- name: VOXSERVE_API_KEY_FILE
  value: /etc/voxserve/auth/api-keys
{{- end }}
{{- with .Values.huggingface.endpoint }}
- name: HF_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- if .Values.huggingface.offline }}
- name: HF_HUB_OFFLINE
  value: "1"
{{- end }}
{{- with .Values.huggingface.token.existingSecret }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.huggingface.token.key }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The mounts of both containers: the config, the key file, the cache and /tmp.
*/}}
{{- define "voxserve.volumeMounts" -}}
- name: config
  mountPath: /etc/voxserve/config.json
  subPath: config.json
  readOnly: true
{{- if include "voxserve.apiKeySecret" . }}
- name: api-keys
  mountPath: /etc/voxserve/auth
  readOnly: true
{{- end }}
- name: models
  mountPath: /models
- name: tmp
  mountPath: /tmp
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}
