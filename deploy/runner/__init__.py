"""Native mode's runner, by responsibility; ``deploy/native.py`` is its command line and facade.

- :mod:`.config`: the environment every process gets, defaults, replicas, checks;
- :mod:`.provision`: PostgreSQL roles and databases, the RabbitMQ vhost, the identity's keys;
- :mod:`.gateway`: nginx's config, rendered from the one gateway template;
- :mod:`.processes`: one supervisord per run dir, which starts, restarts and stops them;
- :mod:`.health`: readiness probes;
- :mod:`.cli`: ``up``, ``down``, ``status``, ``logs``.
"""
