{{/*
Named templates. The ones a parent chart may include (see README.md,
"Injecting the sidecar") take a context with .Values (this chart's values)
and .Release; .Chart is optional there, so nothing they use needs it:

  tenant-proxy.sidecarContainer       the proxy container (a list item)
  tenant-proxy.sidecarVolumes         the volumes it mounts (list items)
  tenant-proxy.sidecarPodAnnotations  checksum and scrape annotations (map entries)
*/}}

{{/* Paths inside the container; the Dockerfile's CMD uses the same settings path. */}}
{{- define "tenant-proxy.configDir" -}}/etc/tenant-proxy{{- end }}
{{- define "tenant-proxy.settingsPath" -}}/etc/tenant-proxy/proxy.yaml{{- end }}
{{- define "tenant-proxy.rulesDir" -}}/etc/tenant-proxy/rules{{- end }}
{{- define "tenant-proxy.rulesPath" -}}/etc/tenant-proxy/rules/rules.yaml{{- end }}

{{/* Chart name (also works from a parent chart's dict context without .Chart). */}}
{{- define "tenant-proxy.name" -}}
{{- $chart := .Chart | default dict }}
{{- default (default "tenant-proxy" $chart.Name) .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, or fullnameOverride; 63 characters at most. */}}
{{- define "tenant-proxy.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "tenant-proxy.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tenant-proxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tenant-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tenant-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tenant-proxy.labels" -}}
helm.sh/chart: {{ include "tenant-proxy.chart" . }}
{{ include "tenant-proxy.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tenant-proxy
{{- end }}

{{- define "tenant-proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tenant-proxy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tenant-proxy.settingsConfigMapName" -}}
{{- printf "%s-settings" (include "tenant-proxy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tenant-proxy.rulesConfigMapName" -}}
{{- if .Values.rulesConfigMap.existing }}
{{- .Values.rulesConfigMap.existing }}
{{- else }}
{{- printf "%s-rules" (include "tenant-proxy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "tenant-proxy.secretName" -}}
{{- default (include "tenant-proxy.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{/* The values are checked once, from every template that depends on them. */}}
{{- define "tenant-proxy.validate" -}}
{{- if not (has .Values.mode (list "sidecar" "standalone")) }}
{{- fail (printf "mode must be sidecar or standalone, not %q" (toString .Values.mode)) }}
{{- end }}
{{- range $key := list "listen" "http_listen" "rules" }}
{{- if hasKey ($.Values.settings | default dict) $key }}
{{- fail (printf "settings.%s is set by the chart (from mode, ports and the rules mount); remove it from your values" $key) }}
{{- end }}
{{- end }}
{{- $drain := include "tenant-proxy.drainTimeout" . | float64 }}
{{- $grace := include "tenant-proxy.terminationGracePeriodSeconds" . | float64 }}
{{- if le $grace $drain }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be greater than the drain timeout settings.limits.drain_timeout (%v), or the kubelet kills the proxy mid-drain" $grace $drain) }}
{{- end }}
{{- end }}

{{- define "tenant-proxy.drainTimeout" -}}
{{- $limits := (.Values.settings | default dict).limits | default dict }}
{{- if hasKey $limits "drain_timeout" }}{{ $limits.drain_timeout }}{{ else }}30{{ end }}
{{- end }}

{{- define "tenant-proxy.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add (include "tenant-proxy.drainTimeout" . | float64 | ceil | int) 15 }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds | int }}
{{- end }}
{{- end }}

{{/* The settings file: the user's settings plus the keys the chart owns. */}}
{{- define "tenant-proxy.settings" -}}
{{- $s := deepCopy (.Values.settings | default dict) }}
{{- $host := ternary "127.0.0.1" "0.0.0.0" (eq .Values.mode "sidecar") }}
{{- $_ := set $s "listen" (printf "%s:%d" $host (int .Values.ports.postgres)) }}
{{- $_ = set $s "http_listen" (printf "0.0.0.0:%d" (int .Values.ports.metrics)) }}
{{- $_ = set $s "rules" (include "tenant-proxy.rulesPath" .) }}
{{- toYaml $s }}
{{- end }}

{{/* The rules file: a string verbatim, or a mapping as YAML. */}}
{{- define "tenant-proxy.rules" -}}
{{- if kindIs "string" .Values.rules }}
{{- .Values.rules }}
{{- else }}
{{- toYaml .Values.rules }}
{{- end }}
{{- end }}

{{- define "tenant-proxy.image" -}}
{{- $chart := .Chart | default dict }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- $tag := .Values.image.tag | default $chart.AppVersion | required "image.tag is required when the chart's appVersion is not known (set tenant-proxy.image.tag when including the sidecar from another chart)" }}
{{- printf "%s:%s" .Values.image.repository (toString $tag) }}
{{- end }}
{{- end }}

{{/*
Pod annotations: a checksum of the settings file (settings are read at start,
so a change must roll the pods) and the Prometheus scrape annotations. The
rules are deliberately not in the checksum: the proxy reloads them live.
*/}}
{{- define "tenant-proxy.podAnnotations" -}}
checksum/settings: {{ include "tenant-proxy.settings" . | sha256sum }}
{{- if .Values.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.ports.metrics | int | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{- define "tenant-proxy.sidecarPodAnnotations" -}}
{{- include "tenant-proxy.validate" . }}
{{- include "tenant-proxy.podAnnotations" . }}
{{- end }}

{{- define "tenant-proxy.probe" -}}
{{- $probe := omit (.probe | default dict) "httpGet" "exec" "tcpSocket" "grpc" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port | int }}
{{- with $probe }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The proxy container. Context: dict "ctx" <root context> "sidecar" <bool>.
In sidecar mode it listens on 127.0.0.1 (the settings' listen), so it
declares no PostgreSQL container port.
*/}}
{{- define "tenant-proxy.container" -}}
{{- $ctx := .ctx }}
{{- $v := $ctx.Values -}}
- name: {{ $v.containerName }}
  image: {{ include "tenant-proxy.image" $ctx | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if and .sidecar $v.sidecar.native }}
  restartPolicy: Always
  {{- end }}
  args:
    - run
    - --config
    - {{ include "tenant-proxy.settingsPath" $ctx }}
    - --rules
    - {{ include "tenant-proxy.rulesPath" $ctx }}
    - --log-format
    - json
    - --log-level
    - {{ $v.logLevel | quote }}
  ports:
    {{- if not .sidecar }}
    - name: postgres
      containerPort: {{ $v.ports.postgres | int }}
      protocol: TCP
    {{- end }}
    - name: {{ $v.ports.metricsName }}
      containerPort: {{ $v.ports.metrics | int }}
      protocol: TCP
  {{- if or $v.secret.proxyKeys $v.extraEnv }}
  env:
    {{- $secretName := include "tenant-proxy.secretName" $ctx }}
    {{- range $key := $v.secret.proxyKeys }}
    - name: {{ $key }}
      valueFrom:
        secretKeyRef:
          name: {{ $secretName }}
          key: {{ $key }}
          optional: true
    {{- end }}
    {{- with $v.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  startupProbe:
    {{- include "tenant-proxy.probe" (dict "probe" $v.probes.startup "path" "/healthz" "port" $v.ports.metrics) | nindent 4 }}
  livenessProbe:
    {{- include "tenant-proxy.probe" (dict "probe" $v.probes.liveness "path" "/healthz" "port" $v.ports.metrics) | nindent 4 }}
  readinessProbe:
    {{- include "tenant-proxy.probe" (dict "probe" $v.probes.readiness "path" "/readyz" "port" $v.ports.metrics) | nindent 4 }}
  {{- with $v.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.lifecycle }}
  lifecycle:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    # Settings are read at start only, so a subPath mount is fine here (the
    # checksum annotation rolls the pods when they change).
    - name: tenant-proxy-settings
      mountPath: {{ include "tenant-proxy.settingsPath" $ctx }}
      subPath: proxy.yaml
      readOnly: true
    # The rules directory is mounted whole (never subPath) so ConfigMap edits
    # reach the pod and the proxy's file watch reloads them.
    - name: tenant-proxy-rules
      mountPath: {{ include "tenant-proxy.rulesDir" $ctx }}
      readOnly: true
    - name: tenant-proxy-tmp
      mountPath: /tmp
    {{- with $v.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{- define "tenant-proxy.volumes" -}}
- name: tenant-proxy-settings
  configMap:
    name: {{ include "tenant-proxy.settingsConfigMapName" . }}
- name: tenant-proxy-rules
  configMap:
    name: {{ include "tenant-proxy.rulesConfigMapName" . }}
    items:
      - key: {{ .Values.rulesConfigMap.key }}
        path: rules.yaml
- name: tenant-proxy-tmp
  {{- if .Values.tmpSizeLimit }}
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
  {{- else }}
  emptyDir: {}
  {{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Public: the sidecar container, for another chart's pod spec. */}}
{{- define "tenant-proxy.sidecarContainer" -}}
{{- include "tenant-proxy.validate" . }}
{{- if ne .Values.mode "sidecar" }}
{{- fail "tenant-proxy.sidecarContainer needs mode: sidecar (the proxy then listens on 127.0.0.1 only)" }}
{{- end }}
{{- include "tenant-proxy.container" (dict "ctx" . "sidecar" true) }}
{{- end }}

{{/* Public: the volumes the sidecar container mounts. */}}
{{- define "tenant-proxy.sidecarVolumes" -}}
{{- include "tenant-proxy.volumes" . }}
{{- end }}

{{/* Pod-level fields shared by both modes' pod templates. */}}
{{- define "tenant-proxy.podSpecCommon" -}}
serviceAccountName: {{ include "tenant-proxy.serviceAccountName" . }}
automountServiceAccountToken: false
terminationGracePeriodSeconds: {{ include "tenant-proxy.terminationGracePeriodSeconds" . }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
