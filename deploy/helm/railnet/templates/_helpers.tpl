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

{{/*
The Lease of a leader-elected component, in the chart's namespace: create cannot be limited by name in
RBAC; get/update only on the component's own lease (named like the component, as its --lease-name).
*/}}
{{- define "railnet.leaseRole" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- $ns := include "railnet.namespace" $root -}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: railnet-{{ $c }}-lease
  namespace: {{ $ns }}
  labels:
    {{- include "railnet.componentLabels" (list $root $c) | nindent 4 }}
rules:
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [create]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  resourceNames: [railnet-{{ $c }}]
  verbs: [get, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: railnet-{{ $c }}-lease
  namespace: {{ $ns }}
  labels:
    {{- include "railnet.componentLabels" (list $root $c) | nindent 4 }}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: railnet-{{ $c }}-lease}
subjects:
- {kind: ServiceAccount, name: railnet-{{ $c }}, namespace: {{ $ns }}}
{{- end -}}

{{/*
The pod spec parts every Deployment shares: include "railnet.deploymentPod" (list . "controller" $args $values)
renders the pod template of component $c running `railnet <args>` as a non-root, read-only container.
*/}}
{{- define "railnet.deploymentPod" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- $args := index . 2 -}}
{{- $v := index . 3 -}}
metadata:
  labels:
    {{- include "railnet.componentLabels" (list $root $c) | nindent 4 }}
spec:
  serviceAccountName: railnet-{{ $c }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- include "railnet.restrictedPod" $root | nindent 4 }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  affinity:
    podAntiAffinity:  # replicas on different nodes where there are enough (preferred: one node still runs both)
      preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "railnet.selectorLabels" (list $root $c) | nindent 14 }}
  containers:
  - name: {{ $c }}
    image: {{ include "railnet.image" $root }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    args:
      {{- toYaml $args | nindent 6 }}
    env:
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    {{- if $v.metricsPort }}
    ports:
    - {name: metrics, containerPort: {{ $v.metricsPort }}, protocol: TCP}
    readinessProbe:
      tcpSocket: {port: metrics}
      periodSeconds: 10
    livenessProbe:
      tcpSocket: {port: metrics}
      initialDelaySeconds: 30
      periodSeconds: 20
    {{- end }}
    resources:
      {{- toYaml $v.resources | nindent 6 }}
    securityContext:
      {{- include "railnet.restrictedContainer" $root | nindent 6 }}
    volumeMounts:
    - {name: tmp, mountPath: /tmp}
    {{- if eq $c "ipam" }}
    - {name: kubeconfig, mountPath: /etc/railnet/kubeconfig, readOnly: true}
    {{- end }}
  volumes:
  - name: tmp
    emptyDir: {sizeLimit: 64Mi}
  {{- if eq $c "ipam" }}
  - name: kubeconfig
    configMap: {name: railnet-in-cluster-kubeconfig}
  {{- end }}
{{- end -}}
