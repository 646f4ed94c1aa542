{{/*
Chart name, truncated to 63 characters (a DNS label).
*/}}
{{- define "polars-cloud-auth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name: the prefix of every resource name. The Service name is part of the
webhook certificate, so it must stay a DNS label.
*/}}
{{- define "polars-cloud-auth.fullname" -}}
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

{{- define "polars-cloud-auth.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Labels of a resource: call with (dict "ctx" $ "component" "webhook") and
optionally "extra" (a dict, e.g. podLabels). The chart's own labels win over
"extra" and commonLabels, so the selector labels can never be overridden.
*/}}
{{- define "polars-cloud-auth.labels" -}}
{{- $ctx := .ctx -}}
{{- $labels := dict
  "helm.sh/chart" (include "polars-cloud-auth.chart" $ctx)
  "app.kubernetes.io/name" (include "polars-cloud-auth.name" $ctx)
  "app.kubernetes.io/instance" $ctx.Release.Name
  "app.kubernetes.io/version" $ctx.Chart.AppVersion
  "app.kubernetes.io/managed-by" $ctx.Release.Service
  "app.kubernetes.io/component" .component
-}}
{{- toYaml (merge $labels (default (dict) .extra) (default (dict) $ctx.Values.commonLabels)) -}}
{{- end -}}

{{/*
Labels selecting the webhook pods.
*/}}
{{- define "polars-cloud-auth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "polars-cloud-auth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end -}}

{{- define "polars-cloud-auth.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "polars-cloud-auth.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Image reference "repository:tag" or "repository@digest".
Call with (dict "repository" ... "tag" ... "digest" ...).
*/}}
{{- define "polars-cloud-auth.imageRef" -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}
{{- end -}}

{{- define "polars-cloud-auth.image" -}}
{{- include "polars-cloud-auth.imageRef" (dict "repository" .Values.image.repository "tag" (default .Chart.AppVersion .Values.image.tag) "digest" .Values.image.digest) -}}
{{- end -}}

{{/*
Image of the injected containers: injection.image.*, falling back to image.*.
*/}}
{{- define "polars-cloud-auth.injectImage" -}}
{{- $i := .Values.injection.image -}}
{{- $repository := default .Values.image.repository $i.repository -}}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) $i.tag -}}
{{- $digest := default .Values.image.digest $i.digest -}}
{{- if and $i.tag (not $i.digest) -}}
{{- $digest = "" -}}
{{- end -}}
{{- include "polars-cloud-auth.imageRef" (dict "repository" $repository "tag" $tag "digest" $digest) -}}
{{- end -}}

{{/*
A resource quantity as a string. Numbers in values files arrive as float64,
which would print as 1.6777216e+07: whole numbers print as integers.
*/}}
{{- define "polars-cloud-auth.quantity" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{- define "polars-cloud-auth.serviceName" -}}
{{- include "polars-cloud-auth.fullname" . -}}
{{- end -}}

{{- define "polars-cloud-auth.tlsSecretName" -}}
{{- printf "%s-tls" (include "polars-cloud-auth.fullname" .) -}}
{{- end -}}

{{- define "polars-cloud-auth.certificateName" -}}
{{- printf "%s-serving" (include "polars-cloud-auth.fullname" .) -}}
{{- end -}}

{{/*
DNS names the API server may use for the webhook Service.
*/}}
{{- define "polars-cloud-auth.dnsNames" -}}
{{- $svc := include "polars-cloud-auth.serviceName" . -}}
{{- $ns := .Release.Namespace -}}
{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) -}}
{{- if .Values.broker.enabled -}}
{{- $b := include "polars-cloud-auth.brokerName" . -}}
{{- $names = concat $names (list $b (printf "%s.%s" $b $ns) (printf "%s.%s.svc" $b $ns) (printf "%s.%s.svc.%s" $b $ns .Values.clusterDomain)) -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/*
Credentials Secret of the injected pods.
*/}}
{{- define "polars-cloud-auth.credentialsSecretName" -}}
{{- default .Values.credentials.secretName .Values.credentials.existingSecret -}}
{{- end -}}

{{- define "polars-cloud-auth.injectSecretName" -}}
{{- default (include "polars-cloud-auth.credentialsSecretName" .) .Values.injection.secretName -}}
{{- end -}}

{{/*
Whether the chart creates the credentials Secret ("true" or ""), after
checking that the credentials values make sense together.
*/}}
{{- define "polars-cloud-auth.createCredentials" -}}
{{- $c := .Values.credentials -}}
{{- if and $c.existingSecret (or $c.clientId $c.clientSecret) -}}
{{- fail "credentials: set either credentials.existingSecret or credentials.clientId and credentials.clientSecret, not both" -}}
{{- end -}}
{{- if and $c.existingSecret $c.namespaces -}}
{{- fail "credentials.namespaces copies the Secret the chart creates from credentials.clientId and credentials.clientSecret; with credentials.existingSecret, create that Secret in each namespace yourself" -}}
{{- end -}}
{{- if and (or $c.clientId $c.clientSecret) (not (and $c.clientId $c.clientSecret)) -}}
{{- fail "credentials: set both credentials.clientId and credentials.clientSecret" -}}
{{- end -}}
{{- if and $c.namespaces (not $c.clientId) -}}
{{- fail "credentials.namespaces needs credentials.clientId and credentials.clientSecret: the chart copies the Secret it creates from them" -}}
{{- end -}}
{{- if and $c.clientId $c.clientSecret -}}true{{- end -}}
{{- end -}}

{{/*
Webhook TLS material made by the chart (tls.certManager.enabled false), as
YAML with base64 values: ca, crt, key, hosts. Keys are ECDSA P-256 (PEM
"EC PRIVATE KEY"), like the cert-manager Certificate's.

The CA and certificate are generated once and then read back with `lookup`
from the Secret of the installed release, so upgrades keep them (and the
caBundle) unchanged. They are generated anew when the Secret is missing or
incomplete, or when its certificate was made for other DNS names (annotation
polars.cloud/tls-hosts), e.g. after a change of fullnameOverride.
Offline (`helm template`, `--dry-run` without a cluster) `lookup` finds
nothing, so every render generates new ones.
*/}}
{{- define "polars-cloud-auth.selfSignedTLS" -}}
{{- $secretName := include "polars-cloud-auth.tlsSecretName" . -}}
{{- $hosts := include "polars-cloud-auth.dnsNames" . | fromJsonArray -}}
{{- $hostsKey := join "," $hosts -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $secretName -}}
{{- $data := dig "data" (dict) $existing -}}
{{- $existingHosts := dig "metadata" "annotations" "polars.cloud/tls-hosts" "" $existing -}}
{{- if and (hasKey $data "ca.crt") (hasKey $data "tls.crt") (hasKey $data "tls.key") (eq $existingHosts $hostsKey) -}}
ca: {{ index $data "ca.crt" | quote }}
crt: {{ index $data "tls.crt" | quote }}
key: {{ index $data "tls.key" | quote }}
{{- else -}}
{{- $days := int .Values.tls.selfSigned.validityDays -}}
{{- $ca := genCAWithKey (printf "%s-ca" (include "polars-cloud-auth.fullname" .)) $days (genPrivateKey "ecdsa") -}}
{{- $cert := genSignedCertWithKey (index $hosts 2) nil $hosts $days $ca (genPrivateKey "ecdsa") -}}
ca: {{ $ca.Cert | b64enc | quote }}
crt: {{ $cert.Cert | b64enc | quote }}
key: {{ $cert.Key | b64enc | quote }}
{{- end }}
hosts: {{ $hostsKey | quote }}
{{- end -}}

{{/*
The broker's Deployment, Service and ServiceAccount name.
*/}}
{{- define "polars-cloud-auth.brokerName" -}}
{{- printf "%s-broker" (include "polars-cloud-auth.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The broker's token endpoint, as injected sidecars call it.
*/}}
{{- define "polars-cloud-auth.brokerURL" -}}
{{- printf "https://%s.%s.svc:443/token" (include "polars-cloud-auth.brokerName" .) .Release.Namespace -}}
{{- end -}}

{{/*
The broker's credentials as a JSON list of {name, secretName}: broker.credentials,
or one credential "default" from the chart's credentials Secret.
*/}}
{{- define "polars-cloud-auth.brokerCredentials" -}}
{{- if .Values.broker.credentials -}}
{{- toJson .Values.broker.credentials -}}
{{- else -}}
{{- toJson (list (dict "name" "default" "secretName" (include "polars-cloud-auth.credentialsSecretName" .))) -}}
{{- end -}}
{{- end -}}

{{/*
Labels selecting the broker's pods.
*/}}
{{- define "polars-cloud-auth.brokerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "polars-cloud-auth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: broker
{{- end -}}
