"""Several sites' agents in one process: `edgesync agent --config a.toml --config b.toml …`.

Each is the real agent (`daemon.Agent`), one instance per site, with its own
config, journal, store, broker connection (its own MQTT client id and user)
and data endpoint; they share only the process and its event loop. This is
for labs: a process per agent costs ~50 MiB and a share of two cores, so a
lab of hundreds of sites on one machine would measure its agents, not the
hub. A deployment runs one agent per site, under its own unit.

The process answers for all of them: a stop signal stops every agent, and an
agent that fails (refused by the hub, a store it can't open) stops the
others and the process exits with that failure, so whoever started it (the
lab) sees it at once rather than a process that serves some sites.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

from edgesync.agent.config import AgentConfig
from edgesync.agent.daemon import Agent
from edgesync.errors import ConfigError
from edgesync.logs import log_context
from edgesync.service import Service

log = logging.getLogger(__name__)


def check_distinct(configs: list[AgentConfig]) -> None:
    """Agents in one process must not share a site, a state directory (their
    journals) or an address: each raises ConfigError naming what is shared."""
    facts: dict[str, Callable[[AgentConfig], object]] = {
        "site": lambda c: c.name, "state_dir": lambda c: c.state_dir,
        "listen": lambda c: f"{c.listen_host}:{c.listen_port}" if c.listen_port else None,
    }
    for what, fact in facts.items():
        counts = Counter(fact(c) for c in configs)
        shared = sorted(str(v) for v, n in counts.items() if n > 1 and v is not None)
        if shared:
            raise ConfigError(f"agents in one process need a {what} each; these configs share "
                              f"{', '.join(shared)}")


async def serve_many(configs: list[AgentConfig]) -> None:
    """Run one agent per config until SIGTERM or SIGINT, or until one of
    them fails (then the others are stopped and its failure raised).
    READY=1 once every agent is running."""
    check_distinct(configs)
    agents = [Agent(config) for config in configs]
    name = f"agents of {len(agents)} sites ({agents[0].site} … {agents[-1].site})"
    async with Service(name, describe=lambda: _describe(agents)) as service:
        running: set[str] = set()

        def one_running(site: str) -> None:
            running.add(site)
            if len(running) == len(agents):
                service.ready(_describe(agents))

        for agent in agents:
            agent.on_running = lambda site=agent.site: one_running(site)
        service.on_stop(lambda: _stop_all(agents))
        tasks = [asyncio.create_task(_serve_one(agent), name=f"agent-{agent.site}") for agent in agents]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        _stop_all(agents)  # one failed (or all stopped): the rest go too
        await asyncio.gather(*tasks, return_exceptions=True)
        failed = [t for t in tasks if not t.cancelled() and t.exception() is not None]
        if failed:
            exc = failed[0].exception()
            assert exc is not None
            log.error("%s: the agent of %s failed; the others are stopped", name,
                      failed[0].get_name().removeprefix("agent-"))
            raise exc


async def _serve_one(agent: Agent) -> None:
    with log_context(site=agent.site):  # this task's lines are about this site
        await agent.start()
        await agent.run()


def _stop_all(agents: list[Agent]) -> None:
    for agent in agents:
        agent.stop()


def _describe(agents: list[Agent]) -> str:
    connected = sum(agent.broker_connected for agent in agents)
    return f"{len(agents)} agents, {connected} connected to the broker"
