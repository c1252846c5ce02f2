{{/*
A RayJob that brings its own RayCluster (head + one fixed-size worker group) and deletes it when the job ends.
Arguments (a dict): ctx, kind (train|backfill), job (the values block), entrypoint, gpus (per worker pod).
*/}}
{{- define "rnnstream.rayJobWithCluster" -}}
{{- $ctx := .ctx -}}
{{- $job := .job -}}
{{- $gpus := int .gpus -}}
apiVersion: ray.io/v1
kind: RayJob
metadata:
  name: {{ include "rnnstream.rayJobName" (list $ctx .kind $job.pipeline) }}
  labels:
    {{- include "rnnstream.labels" $ctx | nindent 4 }}
    app.kubernetes.io/component: {{ .kind }}
    rnnstream.io/pipeline: {{ include "rnnstream.dnsName" $job.pipeline }}
spec:
  submissionMode: K8sJobMode
  entrypoint: {{ .entrypoint | quote }}
  metadata:
    pipeline: {{ $job.pipeline | quote }}
    role: {{ .kind | quote }}
  shutdownAfterJobFinishes: true
  ttlSecondsAfterFinished: {{ $job.ttlSecondsAfterFinished }}
  activeDeadlineSeconds: {{ $job.activeDeadlineSeconds }}
  backoffLimit: {{ default 0 $job.backoffLimit }}
  submitterConfig:
    backoffLimit: 2
  submitterPodTemplate:
    {{- include "rnnstream.submitterPodTemplate" (dict "ctx" $ctx "component" (printf "%s-submitter" .kind)) | nindent 4 }}
  rayClusterSpec:
    rayVersion: {{ $ctx.Values.ray.version | quote }}
    enableInTreeAutoscaling: false
    {{- with (include "rnnstream.authOptions" $ctx | trim) }}{{ . | nindent 4 }}{{- end }}
    headGroupSpec:
      serviceType: ClusterIP
      rayStartParams:
        {{- include "rnnstream.headStartParams" (list $ctx (dict)) | nindent 8 }}
      template:
        {{- include "rnnstream.rayPodTemplate" (dict "ctx" $ctx "role" "head" "component" (printf "%s-head" .kind) "gpus" 0 "group" $job.head "serviceAccount" true) | nindent 8 }}
    workerGroupSpecs:
      - groupName: {{ ternary "gpu" "cpu" (gt $gpus 0) }}
        replicas: {{ $job.workers }}
        minReplicas: {{ $job.workers }}
        maxReplicas: {{ $job.workers }}
        rayStartParams:
          {{- include "rnnstream.workerStartParams" (list $ctx (dict)) | nindent 10 }}
        template:
          {{- include "rnnstream.rayPodTemplate" (dict "ctx" $ctx "role" "worker" "component" (printf "%s-worker" .kind) "gpus" $gpus "group" $job.worker "serviceAccount" true) | nindent 10 }}
{{- end -}}
