{{/*
Names, labels, the image, and the pod template every Ray container of the chart shares.
*/}}

{{/* The chart's name, or nameOverride. */}}
{{- define "raysight.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object's name: release-chart, or the release alone when it already
contains the chart's name. At most 40 characters, because KubeRay derives longer names
from it (the RayService's cluster gets a 5-character suffix, its pods and services more)
and Kubernetes caps labels and service names at 63.
*/}}
{{- define "raysight.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "raysight.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The labels that select this release's pods; never change them after an install. */}}
{{- define "raysight.selectorLabels" -}}
app.kubernetes.io/name: {{ include "raysight.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of the chart's own objects. Pod templates carry only the selector labels and a
component: a label that changes with every chart release (version, chart) would change the
RayService's cluster spec, and KubeRay answers that with a whole new cluster.
*/}}
{{- define "raysight.labels" -}}
helm.sh/chart: {{ include "raysight.chart" . }}
{{ include "raysight.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: raysight
{{- end }}

{{/* The ServiceAccount every pod runs as. */}}
{{- define "raysight.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "raysight.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "raysight.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Dockerfile's WORKDIR: the job entrypoint's relative path resolves against it. */}}
{{- define "raysight.workDir" -}}
/home/ray/raysight
{{- end }}

{{/* Where the training config and the TLS secret are mounted. */}}
{{- define "raysight.configDir" -}}
/etc/raysight
{{- end }}

{{/* The gRPC servicer functions raysight.serve.grpc_services.GRPC_SERVICER_FUNCTIONS names. */}}
{{- define "raysight.grpcServicerFunctions" -}}
- raysight.serve.grpc_services.add_inference_to_server
- raysight.serve.grpc_services.add_images_to_server
- raysight.serve.grpc_services.add_health_to_server
- raysight.serve.grpc_services.add_reflection_to_server
{{- end }}

{{/*
The Serve config (serveConfigV2): the document raysight.serve.runner.serve_config builds
from the same settings, so `serve deploy`, `raysight serve` and the RayService agree.
*/}}
{{- define "raysight.serveConfig" -}}
{{- $serve := .Values.serve }}
{{- $deployment := dict
  "name" "InferenceServer"
  "max_ongoing_requests" (int $serve.maxOngoingRequests)
  "max_queued_requests" (int $serve.maxQueuedRequests)
  "ray_actor_options" (dict
    "num_cpus" $serve.numCpus
    "num_gpus" $serve.numGpus
    "runtime_env" (dict "env_vars" (dict
      "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE" (toString (int $serve.maxMessageBytes))
      "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD" "0")))
  "user_config" $serve.settings
}}
{{- if $serve.autoscaling }}
{{- $_ := set $deployment "autoscaling_config" $serve.autoscaling }}
{{- else }}
{{- $_ := set $deployment "num_replicas" (int $serve.replicas) }}
{{- end }}
{{- $app := dict
  "name" "raysight"
  "route_prefix" "/"
  "import_path" "raysight.serve.app:app_builder"
  "args" (dict)
  "deployments" (list $deployment)
}}
{{- $config := dict
  "http_options" (dict "host" "127.0.0.1" "port" (int $serve.httpPort))
  "grpc_options" (dict
    "port" (int $serve.grpcPort)
    "grpc_servicer_functions" (include "raysight.grpcServicerFunctions" . | fromYamlArray)
    "enable_reflection" false)
  "applications" (list $app)
}}
{{- toYaml $config }}
{{- end }}

{{/*
Environment of every Ray container. RAY_AUTH_MODE is always set: with token
authentication KubeRay adds the token beside it, and without, "disabled" must be explicit
because raysight's own processes (the training driver) default to "token" when it is unset.
Arguments: root, haproxy (bool), maxMessageBytes (serving only).
*/}}
{{- define "raysight.rayEnv" -}}
{{- $root := .root -}}
- name: RAY_AUTH_MODE
  value: {{ ternary "token" "disabled" $root.Values.ray.auth.enabled }}
{{- if .haproxy }}
- name: RAY_SERVE_ENABLE_HA_PROXY
  value: "1"
# Ray binds HAProxy's gRPC frontend where Serve's HTTP port is (127.0.0.1); the image's
# HAProxy launcher (raysight-haproxy) moves it to every interface, to face the Service.
- name: RAYSIGHT_HAPROXY_GRPC_HOST
  value: "0.0.0.0"
{{- with $root.Values.tls.secretName }}
# TLS terminates in HAProxy, with the Secret mounted under the config dir.
- name: RAYSIGHT_TLS_CERT
  value: {{ printf "%s/tls/tls.crt" (include "raysight.configDir" $root) }}
- name: RAYSIGHT_TLS_KEY
  value: {{ printf "%s/tls/tls.key" (include "raysight.configDir" $root) }}
{{- if $root.Values.tls.requireClientCertificate }}
- name: RAYSIGHT_TLS_CLIENT_CA
  value: {{ printf "%s/tls/ca.crt" (include "raysight.configDir" $root) }}
{{- end }}
{{- end }}
{{- end }}
{{- with .maxMessageBytes }}
# The classic proxy's cap on gRPC messages (replicas get theirs from serveConfigV2).
- name: RAY_SERVE_GRPC_MAX_MESSAGE_SIZE
  value: {{ . | int | toString | quote }}
{{- end }}
{{- with $root.Values.ray.env }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* KubeRay's authOptions, or nothing when token authentication is off. */}}
{{- define "raysight.authOptions" -}}
{{- if .Values.ray.auth.enabled -}}
authOptions:
  mode: token
  {{- with .Values.ray.auth.secretName }}
  secretName: {{ . }}
  {{- end }}
{{- end }}
{{- end }}

{{/* The container securityContext of every container the chart defines. */}}
{{- define "raysight.containerSecurityContext" -}}
allowPrivilegeEscalation: false
capabilities:
  drop:
    - ALL
readOnlyRootFilesystem: {{ .Values.securityContext.readOnlyRootFilesystem }}
runAsNonRoot: true
{{- end }}

{{/* rayStartParams: the node's own, then the ones the chart needs (metrics port, dashboard). */}}
{{- define "raysight.rayStartParams" -}}
{{- $params := dict "metrics-export-port" (toString (int .root.Values.ray.metricsPort)) }}
{{- if .head }}
{{- $_ := set $params "dashboard-host" "0.0.0.0" }}
{{- $_ := set $params "dashboard-port" (toString (int .root.Values.ray.dashboardPort)) }}
{{- end }}
{{- toYaml (merge $params .node.rayStartParams) }}
{{- end }}

{{/*
The pod template of a Ray node (head or worker) of either cluster.
Arguments:
  root       the chart's context
  node       the node's values: resources, nodeSelector, tolerations, affinity, gpus
  component  serve or train (the app.kubernetes.io/component label)
  container  the container's name
  ports      the container's ports, YAML
  env        extra environment, YAML (may be empty)
  mounts     extra volumeMounts, YAML (may be empty)
  volumes    extra volumes, YAML (may be empty)
  probes     probes and lifecycle of the container, YAML (may be empty)
  pod        extra pod spec fields, YAML (may be empty)
*/}}
{{- define "raysight.rayPodTemplate" -}}
{{- $root := .root }}
{{- $node := .node -}}
metadata:
  labels:
    {{- include "raysight.selectorLabels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  serviceAccountName: {{ include "raysight.serviceAccountName" $root }}
  securityContext:
    runAsNonRoot: true
    runAsUser: {{ int $root.Values.securityContext.runAsUser }}
    runAsGroup: {{ int $root.Values.securityContext.runAsGroup }}
    fsGroup: {{ int $root.Values.securityContext.fsGroup }}
    seccompProfile:
      type: RuntimeDefault
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .pod }}
  {{- . | nindent 2 }}
  {{- end }}
  {{- with $node.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $node.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $node.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ .container }}
      image: {{ include "raysight.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      workingDir: {{ include "raysight.workDir" $root }}
      ports:
        {{- .ports | nindent 8 }}
      env:
        {{- .env | nindent 8 }}
      resources:
        {{- $resources := deepCopy $node.resources }}
        {{- if $node.gpus }}
        {{- $_ := set $resources "limits" (merge (dict "nvidia.com/gpu" (int $node.gpus)) $resources.limits) }}
        {{- end }}
        {{- toYaml $resources | nindent 8 }}
      securityContext:
        {{- include "raysight.containerSecurityContext" $root | nindent 8 }}
      volumeMounts:
        # Ray's session directory (/tmp/ray) and every other scratch file: the root
        # filesystem is read-only.
        - name: tmp
          mountPath: /tmp
        {{- with .mounts }}
        {{- . | nindent 8 }}
        {{- end }}
      {{- with .probes }}
      {{- . | nindent 6 }}
      {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: {{ $root.Values.tmpSizeLimit }}
    {{- with .volumes }}
    {{- . | nindent 4 }}
    {{- end }}
{{- end }}

{{/*
The training config (TrainConfig fields): the values' config with gpu set from the worker
group. Fails on a config that would lose its results or wait for GPUs that never come.
*/}}
{{- define "raysight.trainConfig" -}}
{{- $train := .Values.train }}
{{- $config := deepCopy $train.config }}
{{- $gpus := int $train.worker.gpus }}
{{- $_ := set $config "gpu" (gt $gpus 0) }}
{{- if gt $gpus 0 }}
{{- $slots := mul $gpus (int $train.worker.replicas) | int }}
{{- $workers := int (default 2 $config.workers) }}
{{- if gt $workers $slots }}
{{- fail (printf "train.config.workers (%d) exceeds the %d GPU(s) of the worker group (replicas x gpus): Ray Train takes one GPU per worker and would wait for ever" $workers $slots) }}
{{- end }}
{{- end }}
{{- /* Each node's disk goes with the cluster; results must land on shared storage. */}}
{{- $mount := $train.checkpointVolume.mountPath }}
{{- range $key := list "output" "storage_path" }}
{{- $path := get $config $key | default "" | toString }}
{{- $shared := or (contains "://" $path) (and $train.checkpointVolume.claimName (or (eq $path $mount) (hasPrefix (printf "%s/" $mount) $path))) }}
{{- if not $shared }}
{{- fail (printf "train.config.%s (%s) must be an s3:// or gs:// URI, or a path under train.checkpointVolume.mountPath with train.checkpointVolume.claimName set: the cluster's own disks are deleted with it" $key $path) }}
{{- end }}
{{- end }}
{{- toYaml $config }}
{{- end }}
