"""saga-shop's benchmark: drive orders through the gateway, measure the saga, compare with the
machine's ceiling (:mod:`bench.raw_pipeline`). ``python -m bench --help``; docs/performance.md."""
