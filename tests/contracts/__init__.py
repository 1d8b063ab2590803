"""Contract suites: one per seam between attachflow and what it drives (the storage API,
the hypervisor, the host connector, the remote runner, the journal). Each states, as
test methods of one class, what the seam's implementations must do; the unit suite
subclasses it with the in-memory twin, the lab suite with the real adapter against the
real service. The same expectations on both sides: a twin that answers differently from
the service it stands for fails.

A subclass provides the fixtures the contract's docstring names."""
