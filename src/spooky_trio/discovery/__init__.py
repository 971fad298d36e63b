"""Backend discovery: file, DNS SRV and etcd sources, and the pools' dynamic backends
(``docs/discovery.md``). ``membership.py`` is the state (kept across reloads in the Server's
store), ``service.py`` the nursery of the source tasks, one module per kind of source."""
