{{/*
Names, labels and the image, shared by every template. Object names are fixed ("railnet-<component>"),
not prefixed by the release name: railnet is installed once per cluster (the CNI plugin, the
schedulerName and the leases are cluster-wide), and the plain manifests must not depend on a release.
*/}}

{{/* The namespace every namespaced object goes to. */}}
{{- define "railnet.namespace" -}}
{{- .Values.namespace.name | default .Release.Namespace -}}
{{- end -}}

{{/* Name of a component's objects: include "railnet.name" (list . "node") -> railnet-node */}}
{{- define "railnet.name" -}}
{{- printf "railnet-%s" (index . 1) -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "railnet.labels" -}}
app.kubernetes.io/name: railnet
app.kubernetes.io/part-of: railnet
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels of one component: include "railnet.selectorLabels" (list . "controller") */}}
{{- define "railnet.selectorLabels" -}}
app.kubernetes.io/name: railnet
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Labels of one component's objects (all labels + its selector labels). */}}
{{- define "railnet.componentLabels" -}}
{{ include "railnet.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* The image reference: repository:tag (tag defaults to the chart's appVersion). */}}
{{- define "railnet.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The name of a component's ServiceAccount. */}}
{{- define "railnet.serviceAccount" -}}
{{- printf "railnet-%s" (index . 1) -}}
{{- end -}}

{{/* A restricted container securityContext (Pod Security "restricted"): for every component but the agent. */}}
{{- define "railnet.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The pod securityContext of the non-root components. */}}
{{- define "railnet.restrictedPod" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}
