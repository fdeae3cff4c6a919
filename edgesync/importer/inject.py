"""Image property injection at import (seed chapter 4.3, Glance's
`inject_image_metadata` plugin).

An operator pins imported images to hosts by injecting properties (say, an
aggregate's metadata key) into every image that users import; callers holding
one of `ignore_user_roles` (typically admin) are left alone, so they can
import images without the pinning.
"""

from __future__ import annotations

from collections.abc import Iterable

from edgesync.config import InjectConfig
from edgesync.errors import ConfigError


def properties_to_inject(cfg: InjectConfig, user_roles: Iterable[str]) -> dict[str, str]:
    """The properties to set on an image this user imports: none if a role is ignored.

    The caller applies them over the image's own properties (they win, as in
    Glance). Role names compare case-insensitively, as Keystone's do.
    """
    ignored = {role.lower() for role in cfg.ignore_user_roles}
    if any(role.lower() in ignored for role in user_roles):
        return {}
    return dict(cfg.properties)


def parse_inject_option(text: str) -> dict[str, str]:
    """Parse Glance's `inject = KEY1:value,KEY2:value;another value` option.

    Comma-separated `key:value` pairs; a value runs to the next comma and may
    hold ';' and further ':' (the key ends at the first ':'). Blanks around
    keys and values are dropped. A pair without ':' or with an empty key, or a
    key given twice, is a ConfigError.
    """
    properties: dict[str, str] = {}
    for entry in text.split(","):
        if not entry.strip():
            continue  # "" or a trailing comma
        key, colon, value = entry.partition(":")
        key = key.strip()
        if not colon or not key:
            raise ConfigError(
                f"inject: {entry.strip()!r} is not a 'property:value' pair; write "
                f"inject = PROPERTY1:value,PROPERTY2:value"
            )
        if key in properties:
            raise ConfigError(f"inject: property {key!r} is given twice")
        properties[key] = value.strip()
    return properties
