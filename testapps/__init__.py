"""Apps served by the runtime in tests, benchmarks and chaos runs (not installed)."""
