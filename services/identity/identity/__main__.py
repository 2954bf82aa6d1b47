"""``python -m identity``: the identity service's one entry point (native and compose alike)."""

from identity.app import settings
from sagakit.runtime import serve

serve("identity.app:app", settings, "identity")
