{{/* Names ---------------------------------------------------------------------------------------------- */}}

{{- define "rnnstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name, kept to 40 characters: KubeRay appends suffixes such as "-head-svc" and group names. */}}
{{- define "rnnstream.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A pipeline name made safe for object names (fraud_v2 -> fraud-v2). */}}
{{- define "rnnstream.dnsName" -}}
{{- . | replace "_" "-" | lower | trunc 20 | trimSuffix "-" -}}
{{- end -}}

{{/* RayJob name: KubeRay allows 47 characters (it appends 6 for the cluster it creates). The kind and the
pipeline are kept whole; the release part is shortened. Arguments: (list ctx kind pipeline). */}}
{{- define "rnnstream.rayJobName" -}}
{{- $ctx := index . 0 -}}
{{- $suffix := printf "%s-%s" (index . 1) (include "rnnstream.dnsName" (index . 2)) -}}
{{- $prefix := include "rnnstream.fullname" $ctx | trunc (int (sub 46 (len $suffix))) | trimSuffix "-" -}}
{{- printf "%s-%s" $prefix $suffix -}}
{{- end -}}

{{- define "rnnstream.scoringClusterName" -}}
{{- printf "%s-scoring" (include "rnnstream.fullname" .) -}}
{{- end -}}

{{- define "rnnstream.configMapName" -}}
{{- printf "%s-config" (include "rnnstream.fullname" .) -}}
{{- end -}}

{{- define "rnnstream.mlflowName" -}}
{{- printf "%s-mlflow" (include "rnnstream.fullname" .) -}}
{{- end -}}

{{- define "rnnstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "rnnstream.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "rnnstream.rayAuthSecretName" -}}
{{- default (printf "%s-ray-auth" (include "rnnstream.fullname" .)) .Values.ray.auth.existingSecret -}}
{{- end -}}

{{/* Labels ------------------------------------------------------------------------------------------------ */}}

{{- define "rnnstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rnnstream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "rnnstream.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "rnnstream.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of every pod that runs Ray (scoring, training, backfill clusters) or submits Ray jobs. The
NetworkPolicy admits traffic between pods carrying these. */}}
{{- define "rnnstream.rayPodLabels" -}}
{{ include "rnnstream.selectorLabels" . }}
app.kubernetes.io/part-of: rnnstream
rnnstream.io/ray: "true"
{{- end -}}

{{/* MLflow ------------------------------------------------------------------------------------------------ */}}

{{- define "rnnstream.mlflowDeployed" -}}
{{- if and .Values.mlflow.enabled (not .Values.mlflow.external.uri) -}}true{{- end -}}
{{- end -}}

{{- define "rnnstream.mlflowTrackingUri" -}}
{{- if .Values.mlflow.external.uri -}}
{{- .Values.mlflow.external.uri -}}
{{- else if .Values.mlflow.enabled -}}
{{- printf "http://%s:%d" (include "rnnstream.mlflowName" .) (int .Values.mlflow.service.port) -}}
{{- end -}}
{{- end -}}

{{- define "rnnstream.mlflowAuthSecretName" -}}
{{- default (printf "%s-mlflow-auth" (include "rnnstream.fullname" .)) .Values.mlflow.auth.existingSecret -}}
{{- end -}}

{{/* The rnnstream pods log in to MLflow: to the release's own server when its basic-auth is on, to an
external one when mlflow.auth.existingSecret names its credentials. */}}
{{- define "rnnstream.mlflowCredentials" -}}
{{- if .Values.mlflow.auth.enabled -}}
{{- if or (include "rnnstream.mlflowDeployed" .) (and .Values.mlflow.external.uri .Values.mlflow.auth.existingSecret) -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/* Pod pieces -------------------------------------------------------------------------------------------- */}}

{{- define "rnnstream.image" -}}
{{- $ctx := index . 0 -}}
{{- $gpu := index . 1 -}}
{{- printf "%s:%s" $ctx.Values.image.repository (ternary $ctx.Values.image.gpuTag $ctx.Values.image.tag $gpu) -}}
{{- end -}}

{{- define "rnnstream.podSecurity" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{- define "rnnstream.containerSecurity" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end -}}

{{/* Environment of the Ray auth token: for Ray containers, the autoscaler and job submitters. KubeRay
injects the same variables from authOptions; setting them here as well covers the submitter pods. */}}
{{- define "rnnstream.rayAuthEnv" -}}
{{- if eq .Values.ray.auth.mode "disabled" }}
- name: RAY_AUTH_MODE
  value: disabled
{{- else }}
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "rnnstream.rayAuthSecretName" . }}
      key: auth_token
{{- end }}
{{- end -}}

{{/* Everything an rnnstream process needs: config, Kafka, MLflow, object store, writable cache dirs. */}}
{{- define "rnnstream.rnnstreamEnv" -}}
{{- include "rnnstream.rayAuthEnv" . }}
- name: RNNSTREAM_CONFIG
  value: /etc/rnnstream/config.yaml
- name: RNNSTREAM_KAFKA_BOOTSTRAP_SERVERS
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: RNNSTREAM_KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- if .Values.kafka.sasl.mechanism }}
- name: RNNSTREAM_KAFKA_SASL_MECHANISM
  value: {{ .Values.kafka.sasl.mechanism | quote }}
{{- end }}
{{- with .Values.kafka.sasl.existingSecret }}
- name: RNNSTREAM_KAFKA_SASL_PLAIN_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.kafka.sasl.usernameKey }}
- name: RNNSTREAM_KAFKA_SASL_PLAIN_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.kafka.sasl.passwordKey }}
{{- end }}
{{- if .Values.kafka.tls.existingSecret }}
- name: RNNSTREAM_KAFKA_SSL_CAFILE
  value: /etc/rnnstream-kafka/ca.crt
{{- end }}
{{- with (include "rnnstream.mlflowTrackingUri" .) }}
- name: MLFLOW_TRACKING_URI
  value: {{ . | quote }}
{{- end }}
{{- if include "rnnstream.mlflowCredentials" . }}
- name: MLFLOW_TRACKING_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ include "rnnstream.mlflowAuthSecretName" . }}
      key: {{ .Values.mlflow.auth.usernameKey }}
- name: MLFLOW_TRACKING_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "rnnstream.mlflowAuthSecretName" . }}
      key: {{ .Values.mlflow.auth.passwordKey }}
{{- end }}
{{- with .Values.objectStore.endpointUrl }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.objectStore.region }}
- name: AWS_REGION
  value: {{ . | quote }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
- name: XDG_CACHE_HOME
  value: /tmp/.cache
- name: MPLCONFIGDIR
  value: /tmp/.matplotlib
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "rnnstream.objectStoreEnvFrom" -}}
{{- with .Values.objectStore.existingSecret }}
envFrom:
  - secretRef:
      name: {{ . }}
{{- end }}
{{- end -}}

{{- define "rnnstream.rayVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: ray-logs
  mountPath: /tmp/ray
- name: shm
  mountPath: /dev/shm
- name: config
  mountPath: /etc/rnnstream
  readOnly: true
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-ca
  mountPath: /etc/rnnstream-kafka
  readOnly: true
{{- end }}
{{- end -}}

{{- define "rnnstream.rayVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.ray.tmpSizeLimit }}
- name: ray-logs
  emptyDir:
    sizeLimit: {{ .Values.ray.tmpSizeLimit }}
- name: shm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.ray.shmSizeLimit }}
- name: config
  configMap:
    name: {{ include "rnnstream.configMapName" . }}
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.tls.existingSecret }}
    items:
      - key: {{ .Values.kafka.tls.caKey }}
        path: ca.crt
{{- end }}
{{- end -}}

{{/* Ports of the scoring workers' per-partition metrics: worker slot i of a pipeline listens on
serving.metricsPort + i, and a Ray actor may land on any scoring pod, so every scoring pod declares the whole
range, one named port (wmetrics-<slot>) per slot up to the most workers a pipeline has. Empty when
serving.metricsPort is 0 (any free port: nothing to declare). Each line: "<slot> <port>". */}}
{{- define "rnnstream.workerMetricsPorts" -}}
{{- $base := int .Values.serving.metricsPort -}}
{{- if gt $base 0 -}}
{{- $slots := 1 -}}
{{- range .Values.pipelines }}{{ $slots = max $slots (int .workers) }}{{ end -}}
{{- range $slot := until (int $slots) }}
{{ $slot }} {{ add $base $slot }}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "rnnstream.scrapeAnnotations" -}}
{{- if .Values.metrics.podAnnotations -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end -}}
{{- end -}}

{{/*
One Ray pod template. Arguments (a dict):
  ctx: the root context; role: head|worker; gpus: GPUs per pod (0 for none); group: the values of the group
  (resources, nodeSelector, tolerations, affinity); serviceAccount: true to run as the chart's account with no
  token (false leaves the account to KubeRay, which the autoscaler needs).
*/}}
{{- define "rnnstream.rayPodTemplate" -}}
{{- $ctx := .ctx -}}
{{- $group := .group -}}
{{- $gpus := int .gpus -}}
metadata:
  labels:
    {{- include "rnnstream.rayPodLabels" $ctx | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
  {{- with (include "rnnstream.scrapeAnnotations" $ctx) }}
  annotations:
    {{- . | nindent 4 }}
  {{- end }}
spec:
  {{- if .serviceAccount }}
  serviceAccountName: {{ include "rnnstream.serviceAccountName" $ctx }}
  automountServiceAccountToken: false
  {{- end }}
  {{- with (include "rnnstream.podSecurity" $ctx | trim) }}{{ . | nindent 2 }}{{- end }}
  containers:
    - name: {{ ternary "ray-head" "ray-worker" (eq .role "head") }}
      image: {{ include "rnnstream.image" (list $ctx (gt $gpus 0)) }}
      imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
      {{- include "rnnstream.containerSecurity" $ctx | nindent 6 }}
      ports:
        {{- if eq .role "head" }}
        - name: gcs-server
          containerPort: 6379
        - name: dashboard
          containerPort: 8265
        - name: client
          containerPort: 10001
        {{- end }}
        - name: metrics
          containerPort: {{ $ctx.Values.metrics.port }}
        {{- if .workerMetrics }}
        {{- range (include "rnnstream.workerMetricsPorts" $ctx | trim | splitList "\n" | compact) }}
        {{- $slotPort := splitList " " . }}
        - name: wmetrics-{{ index $slotPort 0 }}
          containerPort: {{ index $slotPort 1 }}
        {{- end }}
        {{- end }}
      env:
        {{- include "rnnstream.rnnstreamEnv" $ctx | trim | nindent 8 }}
      {{- with (include "rnnstream.objectStoreEnvFrom" $ctx | trim) }}{{ . | nindent 6 }}{{- end }}
      resources:
        requests:
          {{- toYaml $group.resources.requests | nindent 10 }}
          {{- if gt $gpus 0 }}
          nvidia.com/gpu: {{ $gpus }}
          {{- end }}
        limits:
          {{- toYaml $group.resources.limits | nindent 10 }}
          {{- if gt $gpus 0 }}
          nvidia.com/gpu: {{ $gpus }}
          {{- end }}
      volumeMounts:
        {{- include "rnnstream.rayVolumeMounts" $ctx | nindent 8 }}
  volumes:
    {{- include "rnnstream.rayVolumes" $ctx | nindent 4 }}
  {{- with $group.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $group.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $group.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* Head rayStartParams common to every cluster: dashboard reachable inside the cluster (ClusterIP only),
metrics exported on the scrape port. */}}
{{- define "rnnstream.headStartParams" -}}
{{- $ctx := index . 0 -}}
{{- $extra := index . 1 -}}
{{- $params := dict "dashboard-host" "0.0.0.0" "metrics-export-port" (toString $ctx.Values.metrics.port) -}}
{{- range $k, $v := $extra }}{{ $_ := set $params $k (toString $v) }}{{ end -}}
{{- toYaml $params -}}
{{- end -}}

{{- define "rnnstream.workerStartParams" -}}
{{- $ctx := index . 0 -}}
{{- $extra := index . 1 -}}
{{- $params := dict "metrics-export-port" (toString $ctx.Values.metrics.port) -}}
{{- range $k, $v := $extra }}{{ $_ := set $params $k (toString $v) }}{{ end -}}
{{- toYaml $params -}}
{{- end -}}

{{/* spec.authOptions of every RayCluster spec: KubeRay injects the token into the Ray containers and the
autoscaler, and authenticates its own dashboard calls (RayJob status) with the same Secret. */}}
{{- define "rnnstream.authOptions" -}}
authOptions:
  mode: {{ .Values.ray.auth.mode }}
  {{- if eq .Values.ray.auth.mode "token" }}
  secretName: {{ include "rnnstream.rayAuthSecretName" . }}
  {{- end }}
{{- end -}}

{{/*
Submitter pod of a RayJob (runs `ray job submit` and follows the logs): our account without a token, our
security context, limits, and the Ray token. KubeRay fills in the command.
*/}}
{{- define "rnnstream.submitterPodTemplate" -}}
{{- $ctx := .ctx -}}
metadata:
  labels:
    {{- include "rnnstream.rayPodLabels" $ctx | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  restartPolicy: Never
  serviceAccountName: {{ include "rnnstream.serviceAccountName" $ctx }}
  automountServiceAccountToken: false
  {{- with (include "rnnstream.podSecurity" $ctx | trim) }}{{ . | nindent 2 }}{{- end }}
  containers:
    - name: ray-job-submitter
      image: {{ include "rnnstream.image" (list $ctx false) }}
      imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
      {{- include "rnnstream.containerSecurity" $ctx | nindent 6 }}
      {{- with (include "rnnstream.rayAuthEnv" $ctx) }}
      env:
        {{- . | trim | nindent 8 }}
      {{- end }}
      resources:
        {{- toYaml $ctx.Values.serving.submitterResources | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: 1Gi
{{- end -}}

{{/* Autoscaler sidecar settings: limits, a locked-down security context, and the Ray token. */}}
{{- define "rnnstream.autoscalerOptions" -}}
autoscalerOptions:
  idleTimeoutSeconds: {{ .Values.ray.autoscaler.idleTimeoutSeconds }}
  upscalingMode: {{ .Values.ray.autoscaler.upscalingMode }}
  resources:
    {{- toYaml .Values.ray.autoscaler.resources | nindent 4 }}
  securityContext:
    allowPrivilegeEscalation: false
    runAsNonRoot: true
    capabilities:
      drop: ["ALL"]
  {{- with (include "rnnstream.rayAuthEnv" .) }}
  env:
    {{- . | trim | nindent 4 }}
  {{- end }}
{{- end -}}
