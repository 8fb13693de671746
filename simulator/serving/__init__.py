"""Request-level serving simulation of one deployment: spec -> workload -> scheduler + KV cache -> SimPy model
(iteration times from a pluggable `IterationPricer`) -> stats -> max rate. Entry point:
`simulate.simulate_serving(spec, pricer)`; then `stats.summarize(run)`."""
