"""The token an agent shows the hub: its site token (a tokens-file hub), or
a Keystone token from its application credential (`[agent.keystone]`, a hub
with auth = "keystone", which maps the credential's id to this site).

keystoneauth1 keeps the Keystone token and renews it shortly before it
expires; `refresh_forever` asks it every REFRESH_S, off the event loop, so
`current` is always a token that is good for a while yet.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from edgesync.errors import EdgesyncError

if TYPE_CHECKING:
    from edgesync.agent.config import AgentConfig
    from edgesync.keystone import AppCredentialToken

log = logging.getLogger(__name__)

REFRESH_S = 60.0
RETRY_S = 5.0


class HubToken:
    def __init__(self, config: AgentConfig) -> None:
        self.current = config.token
        self._keystone: AppCredentialToken | None = None
        ks = config.keystone
        if ks is not None:
            from edgesync.keystone import AppCredentialToken  # keystoneauth1 only when configured

            self._keystone = AppCredentialToken(ks.auth_url, ks.application_credential_id, ks.secret,
                                                ca_file=ks.ca_file)

    async def refresh(self) -> str:
        if self._keystone is not None:
            self.current = await asyncio.to_thread(self._keystone.get)
        return self.current

    async def refresh_forever(self) -> None:
        if self._keystone is None:
            return
        while True:
            try:
                await self.refresh()
                await asyncio.sleep(REFRESH_S)
            except EdgesyncError as exc:
                log.warning("no Keystone token for the hub yet: %s", exc.message)
                await asyncio.sleep(RETRY_S)
