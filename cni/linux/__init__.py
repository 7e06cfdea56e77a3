"""Linux mechanics shared by the attachment plugins: namespaces, rtnetlink, sysctls, configuring an
interface from a result, and finding a NIC's netdev in sysfs."""
