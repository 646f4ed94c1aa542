// Package crds only pins the API types controller-gen reads (scripts/prometheus.sh crds).
package crds

import _ "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
