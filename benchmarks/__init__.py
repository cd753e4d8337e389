"""blokrun's benchmarks: ``python -m benchmarks`` (``make bench``)."""
