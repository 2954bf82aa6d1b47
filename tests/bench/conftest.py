"""The benchmark's smoke test runs against the e2e stack: the same session fixture."""

from tests.e2e.conftest import otlp, stack  # noqa: F401  (fixtures, used by name)
