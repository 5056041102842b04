"""Model definitions used by benchmarks and scenario workloads."""
