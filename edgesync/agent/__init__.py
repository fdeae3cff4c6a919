"""The site agent: one per edge site, owning that site's store.

- `config`: the site file plus its `[agent]` table;
- `journal`: every task in the agent's own SQLite (idempotency, resume, unsent results);
- `replicator`: one copy or delete, verified and resumable;
- `tasks`: commands journaled on arrival, run with bounded concurrency and retries;
- `events`: what the agent owes the hub, sent when the broker is reachable;
- `daemon`: the lifecycle (`Agent`, `serve`).
"""
