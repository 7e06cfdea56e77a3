{{/*
Checks of values that values.schema.json cannot express; each fails the render (before anything is
applied) with what to fix. validate.yaml calls "railnet.validate"; it renders nothing.
*/}}

{{/* The 32-bit integer of an IPv4 address (as a string); "" when it is not one. */}}
{{- define "railnet.ip4" -}}
{{- if regexMatch "^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$" (toString .) -}}
{{- $n := 0 -}}
{{- range splitList "." (toString .) -}}{{- $n = add (mul $n 256) (atoi .) -}}{{- end -}}
{{- $n -}}
{{- end -}}
{{- end -}}

{{/* 2^n as a string (sprig has no pow). */}}
{{- define "railnet.pow2" -}}
{{- $v := 1 -}}
{{- range until (int .) -}}{{- $v = mul $v 2 -}}{{- end -}}
{{- $v -}}
{{- end -}}

{{/* Fails unless address `addr` (IPv4) is inside [first, last]: (list what addr first last where) */}}
{{- define "railnet.checkInside" -}}
{{- $what := index . 0 -}}{{- $addr := index . 1 -}}{{- $first := index . 2 -}}{{- $last := index . 3 -}}{{- $where := index . 4 -}}
{{- $a := include "railnet.ip4" $addr -}}
{{- if eq $a "" -}}
{{- fail (printf "%s: %q is not an IPv4 address (the pool's subnet is IPv4): write e.g. 10.1.0.10" $what (toString $addr)) -}}
{{- end -}}
{{- if or (lt (atoi $a) $first) (gt (atoi $a) $last) -}}
{{- fail (printf "%s: %s is not inside %s: fix the address or the subnet" $what (toString $addr) $where) -}}
{{- end -}}
{{- end -}}

{{- define "railnet.validatePool" -}}
{{- $i := index . 0 -}}{{- $p := index . 1 -}}
{{- $at := printf "pools[%d]" $i -}}
{{- if not $p.name -}}
{{- fail (printf "%s: name is missing: give the pool a name (the IPPool's name, which NADs' ipam.pool refer to)" $at) -}}
{{- end -}}
{{- $at = printf "pools[%d] (%s)" $i $p.name -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$" $p.name) -}}
{{- fail (printf "%s: name must be a DNS subdomain (lower case letters, digits, '-' and '.')" $at) -}}
{{- end -}}
{{- $subnet := toString ($p.subnet | default "") -}}
{{- if not $subnet -}}
{{- fail (printf "%s: subnet is missing: give the pool's network as a CIDR, e.g. 172.30.0.0/16" $at) -}}
{{- end -}}
{{- if contains ":" $subnet -}}
{{- if not (regexMatch "^[0-9a-fA-F:]+/([0-9]|[1-9][0-9]|1[01][0-9]|12[0-8])$" $subnet) -}}
{{- fail (printf "%s: subnet %q is not a CIDR: write the network address and prefix, e.g. fd00:30::/64" $at $subnet) -}}
{{- end -}}
{{- else -}}
{{- $parts := splitList "/" $subnet -}}
{{- if or (ne (len $parts) 2) (eq (include "railnet.ip4" (first $parts)) "") (not (regexMatch "^([0-9]|[12][0-9]|3[0-2])$" (last $parts))) -}}
{{- fail (printf "%s: subnet %q is not a CIDR: write the network address and prefix, e.g. 172.30.0.0/16" $at $subnet) -}}
{{- end -}}
{{- $prefix := atoi (last $parts) -}}
{{- $size := atoi (include "railnet.pow2" (sub 32 $prefix)) -}}
{{- $net := atoi (include "railnet.ip4" (first $parts)) -}}
{{- if ne (mod $net $size) 0 -}}
{{- fail (printf "%s: subnet %s has host bits set: write the network address, e.g. %s" $at $subnet "10.1.0.0/24") -}}
{{- end -}}
{{- $last := sub (add $net $size) 1 -}}
{{- range $j, $r := $p.ranges -}}
{{- $w := printf "%s: ranges[%d]" $at $j -}}
{{- if or (not $r.start) (not $r.end) -}}{{- fail (printf "%s: give both start and end" $w) -}}{{- end -}}
{{- include "railnet.checkInside" (list (printf "%s start" $w) $r.start $net $last (printf "subnet %s" $subnet)) -}}
{{- include "railnet.checkInside" (list (printf "%s end" $w) $r.end $net $last (printf "subnet %s" $subnet)) -}}
{{- if gt (atoi (include "railnet.ip4" $r.start)) (atoi (include "railnet.ip4" $r.end)) -}}
{{- fail (printf "%s: start %s is above end %s: swap them" $w $r.start $r.end) -}}
{{- end -}}
{{- end -}}
{{- range $j, $r := $p.fixedRanges -}}
{{- $w := printf "%s: fixedRanges[%d]" $at $j -}}
{{- if or (not $r.start) (not $r.end) -}}{{- fail (printf "%s: give both start and end" $w) -}}{{- end -}}
{{- include "railnet.checkInside" (list (printf "%s start" $w) $r.start $net $last (printf "subnet %s" $subnet)) -}}
{{- include "railnet.checkInside" (list (printf "%s end" $w) $r.end $net $last (printf "subnet %s" $subnet)) -}}
{{- end -}}
{{- with $p.gateway -}}
{{- include "railnet.checkInside" (list (printf "%s: gateway" $at) . $net $last (printf "subnet %s" $subnet)) -}}
{{- end -}}
{{- if and $p.blockSize (or (lt (int $p.blockSize) $prefix) (gt (int $p.blockSize) 32)) -}}
{{- fail (printf "%s: blockSize %v must be a prefix length between the subnet's /%d and /32, e.g. 26 for blocks of 64 addresses" $at $p.blockSize $prefix) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "railnet.validate" -}}
{{- $known := list "node" "dra" "controller" "scheduler" "ipam" -}}
{{- range $k, $_ := .Values.components -}}
{{- if not (has $k $known) -}}
{{- fail (printf "components.%s: unknown component; known: %s" $k (join ", " $known)) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.components.dra (not .Values.components.node) -}}
{{- fail "components.dra needs components.node: the DRA driver runs inside the node agent (enable node, or disable dra)" -}}
{{- end -}}
{{- if .Values.components.node -}}
{{- $c := toString (.Values.cni.primaryConflist | default "") -}}
{{- if not $c -}}
{{- fail (printf "cni.primaryConflist is empty: set it to the file name of the node's primary network in %s (e.g. 10-calico.conflist; see `ls %s` on a node), which railnet wraps" .Values.cni.confDir .Values.cni.confDir) -}}
{{- end -}}
{{- if or (contains "/" $c) (not (regexMatch "\\.(conflist|conf|json)$" $c)) -}}
{{- fail (printf "cni.primaryConflist %q must be a file name in cni.confDir ending in .conflist, .conf or .json (no directory)" $c) -}}
{{- end -}}
{{- if eq $c "00-railnet.conflist" -}}
{{- fail "cni.primaryConflist is railnet's own 00-railnet.conflist: name the node's primary network's file (e.g. 10-calico.conflist)" -}}
{{- end -}}
{{- end -}}
{{- $names := list -}}
{{- range $i, $p := .Values.pools -}}
{{- include "railnet.validatePool" (list $i $p) -}}
{{- if has $p.name $names -}}{{- fail (printf "pools[%d]: the name %s is used twice: pool names must be unique" $i $p.name) -}}{{- end -}}
{{- $names = append $names $p.name -}}
{{- end -}}
{{- range $i, $r := .Values.rails -}}
{{- if not $r.name -}}{{- fail (printf "rails[%d]: name is missing: give the rail network a name (the NAD's name)" $i) -}}{{- end -}}
{{- $parents := 0 -}}
{{- range $k := list "rdmaDevice" "master" "pciAddress" -}}{{- if hasKey $r $k -}}{{- $parents = add1 $parents -}}{{- end -}}{{- end -}}
{{- if and $r.auto (ne $parents 0) -}}
{{- fail (printf "rails[%d] (%s): an auto rail takes each pod's NICs from the scheduler's allocation: remove rdmaDevice, master and pciAddress (or set auto: false for a network on one NIC)" $i $r.name) -}}
{{- end -}}
{{- if and (not $r.auto) (ne $parents 1) -}}
{{- fail (printf "rails[%d] (%s): give exactly one of rdmaDevice, master or pciAddress (the rail's parent NIC), or auto: true" $i $r.name) -}}
{{- end -}}
{{- if and $r.auto $r.pool (not (contains "{rail}" $r.pool)) -}}
{{- fail (printf "rails[%d] (%s): pool %q of an auto rail must contain {rail} (each rail its own pool, e.g. rail{rail})" $i $r.name $r.pool) -}}
{{- end -}}
{{- end -}}
{{- end -}}
