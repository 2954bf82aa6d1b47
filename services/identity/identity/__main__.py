"""``python -m identity``: the identity service's one entry point (native and compose alike)."""

from identity.settings import IdentitySettings
from sagakit.runtime import serve

serve("identity.app:build", IdentitySettings(), "identity")
