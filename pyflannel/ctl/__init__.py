"""``flannelctl``: the operator's tool, one module per concern.

``cli`` parses flanneld's flags (same table, Go syntax, FLANNELD_* variables) and dispatches;
``etcdctl`` holds the commands that only talk to etcd (config, leases, reservations);
``node`` gathers what a node's kernel, files and daemon say; ``status`` and ``doctor`` turn
those facts into a report; ``dockeropts`` is the I/O around ``core.docker_opts``;
``output`` renders tables, durations and JSON.
"""
