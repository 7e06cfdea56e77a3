"""DRA for railnet's scheduler, the pure part: ResourceSlices, DeviceClasses and ResourceClaims
(resource.k8s.io/v1) as plain records (api.py), request selectors in CEL (cel.py), and the joint
matching of a pod's claims with the core's GPU + NIC placement (match.py). The live side (caches,
the device ledger, claim status writes) is scheduler/live/claims.py."""
