"""engarde benchmarks: ``make bench`` / ``python -m bench``.

Runs every scenario on network namespaces it creates (through :mod:`lab`) and removes, with load
tools and a baseline relay written in C (``bench/c/``, compiled into ``bench/build/``), prints one
table and writes JSON under ``bench/results/``. The method is described in docs/performance.md.

Modules: :mod:`bench.build` compiles the C tools, :mod:`bench.procs` starts and reads processes,
:mod:`bench.topology` adds what the benchmarks need on top of :class:`lab.Lab`,
:mod:`bench.paths` the relay paths under test (direct, C relay, engarde; server relays alone;
engarde with wireguard-go),
:mod:`bench.scenarios` the measurements, :mod:`bench.report` the table and JSON,
:mod:`bench.cli` the command line.
"""
