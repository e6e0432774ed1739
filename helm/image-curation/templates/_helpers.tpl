{{- define "image-curation.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "image-curation.fullname" -}}
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

{{- define "image-curation.selectorLabels" -}}
app.kubernetes.io/name: {{ include "image-curation.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "image-curation.labels" -}}
{{ include "image-curation.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "image-curation.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "image-curation.runnerServiceAccount" -}}
{{- if .Values.runWorker.serviceAccount.create -}}
{{- default (printf "%s-runner" (include "image-curation.fullname" .)) .Values.runWorker.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.runWorker.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "image-curation.envConfigMap" -}}
{{- printf "%s-env" (include "image-curation.fullname" .) -}}
{{- end -}}

{{/* Credentials: always secretKeyRef, never a value. */}}
{{- define "image-curation.pgSecretEnv" -}}
- name: DAGSTER_PG_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.postgresql.name }}
      key: {{ .Values.secrets.postgresql.passwordKey }}
{{- end -}}

{{- define "image-curation.s3SecretEnv" -}}
{{- if .Values.secrets.s3.enabled }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.s3.name }}
      key: {{ .Values.secrets.s3.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.s3.name }}
      key: {{ .Values.secrets.s3.secretAccessKeyKey }}
{{- end }}
{{- end -}}

{{/* Writable scratch for a read-only root filesystem; identical to orchestration/k8s.py. */}}
{{- define "image-curation.scratchEnv" -}}
- name: HOME
  value: /tmp/home
- name: TMPDIR
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/cache
- name: MPLCONFIGDIR
  value: /tmp/mpl
{{- end -}}

{{/*
The k8s container context the code server hands to the K8sRunLauncher: it applies to the run pod
and (merged under the executor's step_k8s_config and the per-asset tags) to every step pod.
No node selector here: it would be merged into the GPU steps' selector too. GPU nodes are
tainted, so CPU pods stay off them without one.
*/}}
{{- define "image-curation.containerContext" -}}
k8s:
  namespace: {{ .Release.Namespace }}
  service_account_name: {{ include "image-curation.runnerServiceAccount" . }}
  image_pull_policy: {{ .Values.image.pullPolicy }}
  {{- with .Values.imagePullSecrets }}
  image_pull_secrets: {{- toYaml . | nindent 4 }}
  {{- end }}
  env_config_maps:
    - {{ include "image-curation.envConfigMap" . }}
  # DAGSTER_PG_PASSWORD is not repeated here: the K8sRunLauncher adds it to run and step pods
  # from the dagster chart's global.postgresqlSecretName.
  env:
    {{- include "image-curation.s3SecretEnv" . | nindent 4 }}
    {{- include "image-curation.scratchEnv" . | nindent 4 }}
  volumes:
    - name: scratch
      emptyDir: {}
  volume_mounts:
    - name: scratch
      mountPath: /tmp
  security_context: {{- toYaml .Values.securityContext | nindent 4 }}
  resources: {{- toYaml .Values.runWorker.resources | nindent 4 }}
  labels:
    app.kubernetes.io/part-of: {{ include "image-curation.name" . }}
  run_k8s_config:
    pod_spec_config:
      security_context: {{- toYaml .Values.podSecurityContext | nindent 8 }}
{{- end -}}
