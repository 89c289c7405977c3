{{/* Names and labels shared by every template. */}}
{{- define "gptoss-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gptoss-operator.fullname" -}}
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

{{- define "gptoss-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gptoss-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "gptoss-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "gptoss-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: gptoss-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "gptoss-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gptoss-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "gptoss-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- with .Values.image.digest }}@{{ . }}{{ end -}}
{{- end -}}

{{/* The ClusterRoles of a model's workers, bound by the operator in the model's namespace. */}}
{{- define "gptoss-operator.downloaderRole" -}}
{{ include "gptoss-operator.fullname" . }}-downloader
{{- end -}}
{{- define "gptoss-operator.sidecarRole" -}}
{{ include "gptoss-operator.fullname" . }}-sidecar
{{- end -}}
{{- define "gptoss-operator.sidecarTenantRole" -}}
{{ include "gptoss-operator.fullname" . }}-sidecar-tenant
{{- end -}}
{{- define "gptoss-operator.batchWorkerRole" -}}
{{ include "gptoss-operator.fullname" . }}-batch-worker
{{- end -}}

{{/*
The operator's rules in each namespace it serves. It never holds its workers' rules: it
binds their ClusterRoles (the bind verb, on those names alone), so it cannot read
Secrets (it only creates each model's API key Secret), write ConfigMaps, write Roles or
bind any other role.
*/}}
{{- define "gptoss-operator.rules" -}}
- apiGroups: ["gptoss.ai"]
  resources: ["gptossmodels", "inferencejobs", "inferencebatches"]
  verbs: ["get", "list", "watch", "patch", "update", "delete"]
- apiGroups: ["gptoss.ai"]
  resources: ["gptossmodels/status", "inferencejobs/status", "inferencebatches/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims", "services", "serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "patch", "update"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Each model's API key Secret is created once with a random key; never read or updated.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "update"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["rolebindings"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
{{- end -}}

{{/* The operator may bind its workers' ClusterRoles and no other role. */}}
{{- define "gptoss-operator.bindRules" -}}
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["clusterroles"]
  verbs: ["bind"]
  resourceNames:
    - {{ include "gptoss-operator.downloaderRole" . }}
    - {{ include "gptoss-operator.sidecarRole" . }}
    - {{ include "gptoss-operator.sidecarTenantRole" . }}
    - {{ include "gptoss-operator.batchWorkerRole" . }}
{{- end -}}

{{/*
Peers the models' NetworkPolicies admit besides their namespace: the listed ones, and
the operator's own pods when it reads vLLM's /metrics for the autoscaler (JSON).
*/}}
{{- define "gptoss-operator.networkPolicyFrom" -}}
{{- $from := .Values.networkPolicy.from -}}
{{- if .Values.autoscaling.engineMetrics -}}
{{- $operator := dict
      "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" .Release.Namespace))
      "podSelector" (dict "matchLabels" (include "gptoss-operator.selectorLabels" . | fromYaml)) -}}
{{- $from = append $from $operator -}}
{{- end -}}
{{- $from | toJson -}}
{{- end }}
