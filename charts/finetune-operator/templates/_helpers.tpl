{{/* The release's full name, at most 63 characters (a DNS label). */}}
{{- define "finetune-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Every pod of the release (the operator and the `helm test` pod). */}}
{{- define "finetune-operator.instanceLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The operator's pods only: what the Deployment and the Service select. */}}
{{- define "finetune-operator.selectorLabels" -}}
{{ include "finetune-operator.instanceLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "finetune-operator.labels" -}}
{{ include "finetune-operator.instanceLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "finetune-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "finetune-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "finetune-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- end -}}

{{/*
Rules on objects inside a namespace: a ClusterRole with all namespaces watched, else a Role
in each watched namespace. Each rule's reason is in docs/rbac.md.
*/}}
{{- define "finetune-operator.namespacedRules" -}}
- apiGroups: ["finetune.io"]
  resources: ["finetunejobs"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["finetune.io"]
  resources: ["finetunejobs/status"]
  verbs: ["patch"]
- apiGroups: ["finetune.io"]
  resources: ["finetunejobs/finalizers"]
  verbs: ["update"]
- apiGroups: ["ray.io"]
  resources: ["rayjobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if and .Values.peering.enabled .Values.watchNamespaces }}
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- end -}}

{{/*
Rules on cluster-scoped objects: always a ClusterRole, whatever is watched. kopf lists and
watches namespaces only when it watches listed ones (to notice them come and go), and keeps
its peering cluster-wide only when it watches all of them (else a KopfPeering per namespace).
*/}}
{{- define "finetune-operator.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if .Values.watchNamespaces }}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- if and .Values.peering.enabled (not .Values.watchNamespaces) }}
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- end -}}

{{/*
Policy scanners' findings that do not apply, each with its reason (checkov reads these).
The image and its pull policy are the admin's values: pin a digest with
image.tag: "0.1.0@sha256:...", and Always is then unnecessary.
*/}}
{{- define "finetune-operator.scannerExceptions" -}}
checkov.io/skip1: CKV_K8S_43=the image comes from values; pin a digest with image.tag TAG@sha256:DIGEST
checkov.io/skip2: CKV_K8S_15=IfNotPresent by default (image.pullPolicy); a pinned digest makes Always unnecessary
checkov.io/skip3: CKV_K8S_38=the operator calls the Kubernetes API with its ServiceAccount token
{{- end -}}
