"""sagakit: what every saga-shop service is built from.

The event contract (:mod:`sagakit.events`), the envelope that carries it over AMQP
(:mod:`sagakit.envelope`), the broker topology with retries and dead letters
(:mod:`sagakit.topology`, :mod:`sagakit.consuming`), the transactional outbox and its relays
(:mod:`sagakit.outbox`), the idempotent inbox (:mod:`sagakit.postgres`), the HTTP edges shared
by all services (:mod:`sagakit.web`), and what lets an operator follow an order: traces and
exported logs (:mod:`sagakit.telemetry`), JSON log lines (:mod:`sagakit.logs`) and Prometheus
metrics (:mod:`sagakit.metrics`).
"""
