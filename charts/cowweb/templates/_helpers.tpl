{{- define "cowweb.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cowweb.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cowweb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cowweb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "cowweb.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "cowweb.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The app's flags: graceful and immediate in cowweb-go v1.1.1's own words, so the upstream image runs them. */}}
{{- define "cowweb.args" -}}
- serve
- --port={{ .Values.app.port }}
{{- if .Values.app.slow }}
- --slow
{{- end }}
- --load={{ .Values.app.load }}
{{- with .Values.app.delay }}
- --delay={{ . }}
{{- end }}
{{- if eq .Values.app.shutdown "drain" }}
- --shutdown=drain
{{- with .Values.app.drainDelay }}
- --drain-delay={{ . }}
{{- end }}
{{- else }}
- --shutdown-gracefully={{ eq .Values.app.shutdown "graceful" }}
{{- end }}
{{- with .Values.app.shutdownTimeout }}
- --shutdown-timeout={{ . }}
{{- end }}
{{- range .Values.app.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{/* An HTTP GET of the probe's path; with no path, a TCP connect to the app's port. */}}
{{- define "cowweb.probe" -}}
{{- if .path }}
httpGet:
  path: {{ .path | quote }}
  port: http
{{- else }}
tcpSocket:
  port: http
{{- end }}
{{- with .initialDelaySeconds }}
initialDelaySeconds: {{ . }}
{{- end }}
periodSeconds: {{ .periodSeconds }}
timeoutSeconds: {{ .timeoutSeconds }}
{{- with .successThreshold }}
successThreshold: {{ . }}
{{- end }}
failureThreshold: {{ .failureThreshold }}
{{- end -}}
