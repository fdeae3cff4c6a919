"""The `edgesync` command: daemons, the admin commands, the local lab, the demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from edgesync import logs
from edgesync.errors import EdgesyncError


def _add_log_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=logs.FORMATS, default="text",
                        help="text (default) or json: one object per line with ts, level, logger, msg, "
                             "site, image_id, task_id")


def _cmd_hub(args: argparse.Namespace) -> int:
    from edgesync.config import load_hub
    from edgesync.hub.app import serve
    from edgesync.runtime import limit_malloc_arenas, raise_open_files_limit

    limit_malloc_arenas()
    raise_open_files_limit()
    asyncio.run(serve(load_hub(Path(args.config))))
    return 0


def _cmd_agent(args: argparse.Namespace) -> int:
    from edgesync.agent.config import load_agent
    from edgesync.agent.daemon import serve
    from edgesync.errors import ConfigError
    from edgesync.runtime import limit_malloc_arenas, raise_open_files_limit

    if not args.config:
        raise ConfigError("the agent needs --config sites/<site>.toml (the site file with its [agent] table)")
    configs = [load_agent(Path(path)) for path in args.config]
    limit_malloc_arenas()
    raise_open_files_limit()
    if len(configs) == 1:
        asyncio.run(serve(configs[0]))
    else:  # a lab's agents sharing a process (see agent/shared_process.py)
        from edgesync.agent.shared_process import serve_many

        asyncio.run(serve_many(configs))
    return 0


def _cmd_agent_register(args: argparse.Namespace) -> int:
    from edgesync.agent.config import load_agent
    from edgesync.agent.register import register

    config = load_agent(Path(args.config))
    outcomes = asyncio.run(register(config, args.images, name=args.name, owner=args.owner,
                                    visibility=args.visibility))
    for outcome in outcomes:
        if outcome.registered is not None:
            r = outcome.registered
            print(f"{r.image_id} registered at {config.name} ({r.location_url}); "
                  f"copying to central: task {r.task_id}")
        else:
            assert outcome.error is not None
            print(f"edgesync: {outcome.ref}: {outcome.error.message}", file=sys.stderr)
    return 0 if all(o.registered is not None for o in outcomes) else 2


def _cmd_lab(args: argparse.Namespace) -> int:
    from edgesync import lab
    from edgesync.runtime import raise_open_files_limit

    raise_open_files_limit()  # inherited by what the lab starts (its Mosquitto holds one connection per site)

    directory = Path(args.dir).resolve()
    if args.lab_command == "up":
        sites = [s.strip() for s in args.sites.split(",") if s.strip()]
        info = asyncio.run(lab.up(directory, store=args.store, sites=sites, agents=args.agents,
                                  offline_deadline_s=args.offline_deadline_s, wan=args.wan, auth=args.auth,
                                  agents_per_process=args.agents_per_process, plaintext=args.plaintext))
        print(json.dumps(info, indent=2))
    elif args.lab_command == "agent":
        if args.action == "stop":
            asyncio.run(lab.stop_agent(directory, args.site, kill=args.kill))
            print(f"agent of {args.site} stopped")
        else:
            pid = asyncio.run(lab.start_agent(directory, args.site))
            print(f"agent of {args.site} running (pid {pid})")
    elif args.lab_command == "hub":
        if args.action == "stop":
            asyncio.run(lab.stop_hub(directory, kill=args.kill))
            print("hub stopped")
        else:
            print(f"hub running (pid {asyncio.run(lab.start_hub(directory))})")
    elif args.lab_command == "keystone":
        asyncio.run(lab.stop_keystone(directory) if args.action == "stop" else lab.start_keystone(directory))
        print("keystone stopped" if args.action == "stop" else "keystone started")
    elif args.lab_command == "broker":
        asyncio.run(lab.stop_broker(directory) if args.action == "stop" else lab.start_broker(directory))
        print(f"broker {'stopped' if args.action == 'stop' else 'running'}")
    elif args.lab_command == "wan":
        asyncio.run(lab.set_link(directory, args.site, up=args.action == "heal"))
        print(f"link of {args.site} {'up' if args.action == 'heal' else 'cut'}")
    elif args.lab_command == "down":
        asyncio.run(lab.down(directory))
        print(f"lab in {directory} stopped")
    else:
        print(json.dumps(lab.read_info(directory), indent=2))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from edgesync.lab.demo import run_demo

    return asyncio.run(run_demo(Path(args.dir).resolve(), store=args.store))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgesync", description=__doc__)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)

    hub = sub.add_parser("hub", help="run the hub daemon (Glance v2 API, catalog, imports)")
    hub.add_argument("--config", required=True, help="path to hub.toml")
    _add_log_format(hub)
    hub.set_defaults(func=_cmd_hub)

    agent = sub.add_parser("agent", help="run an edge site's agent (its store, commands over MQTT)")
    agent.add_argument("--config", action="append",
                       help="path to the site's file (sites/<site>.toml) with its [agent] table; given "
                            "several times, one agent per site in this process (for labs)")
    _add_log_format(agent)
    agent.set_defaults(func=_cmd_agent)
    _add_agent_register(agent.add_subparsers(dest="agent_command", metavar="[register]"))

    lab = sub.add_parser("lab", help="a local multi-site deployment for trying and testing")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True)
    up = lab_sub.add_parser("up", help="start the lab (returns when it is ready)")
    up.add_argument("--store", choices=["file", "rbd"], default="file")
    up.add_argument("--sites", default="central,dcn0,dcn1",
                    help="comma-separated site names; the first is central")
    up.add_argument("--agents", action=argparse.BooleanOptionalAction, default=True,
                    help="start Mosquitto and one agent per edge site, which operate the edge stores "
                         "(default); --no-agents: the hub writes every store itself")
    up.add_argument("--offline-deadline-s", type=float, default=300.0, metavar="SECONDS",
                    help="with agents: a copy to a site down this long fails with 'site offline' "
                         "(default 300)")
    up.add_argument("--agents-per-process", type=int, default=1, metavar="N",
                    help="run N edges' agents in each agent process (one agent instance per site, "
                         "as many processes as needed): labs of hundreds of sites; default 1")
    up.add_argument("--wan", metavar="RATE",
                    help="every site in a network namespace of its own, behind a link shaped to RATE "
                         "(e.g. 200mbit; central unshaped unless named: 200mbit,central=1gbit,dcn1=50mbit)")
    up.add_argument("--auth", choices=["token", "keystone"], default="token",
                    help="token: a tokens file (default); keystone: also start a real Keystone, "
                         "write clouds.yaml, and the hub validates Keystone tokens")
    up.add_argument("--plaintext", action="store_true",
                    help="no TLS: plain HTTP for the hub and agents, passwords on a plaintext MQTT listener "
                         "(the default is a lab CA, HTTPS and MQTT over TLS with a certificate per site)")
    for name in ("down", "status"):
        lab_sub.add_parser(name, help=f"{name} the lab")
    agent = lab_sub.add_parser("agent", help="stop or start one site's agent")
    agent.add_argument("action", choices=["stop", "start"])
    agent.add_argument("site")
    agent.add_argument("--kill", action="store_true", help="SIGKILL instead of a clean stop")
    hub_cmd = lab_sub.add_parser("hub", help="stop or start the hub (a started hub recovers unfinished tasks)")
    hub_cmd.add_argument("action", choices=["stop", "start"])
    hub_cmd.add_argument("--kill", action="store_true", help="SIGKILL instead of a clean stop")
    broker_cmd = lab_sub.add_parser("broker", help="stop or start Mosquitto (its persistence is kept)")
    broker_cmd.add_argument("action", choices=["stop", "start"])
    wan_cmd = lab_sub.add_parser("wan", help="cut or heal one site's WAN link (a lab up with --wan)")
    wan_cmd.add_argument("action", choices=["cut", "heal"])
    wan_cmd.add_argument("site")
    keystone_cmd = lab_sub.add_parser("keystone", help="stop or start the lab's Keystone (--auth keystone)")
    keystone_cmd.add_argument("action", choices=["stop", "start"])
    for p in lab_sub.choices.values():
        p.add_argument("--dir", default=".lab", help="lab directory (default .lab)")
    lab.set_defaults(func=_cmd_lab)

    demo = sub.add_parser("demo", help="bring a lab up and show an image imported and copied")
    demo.add_argument("--dir", default=".lab")
    demo.add_argument("--store", choices=["file", "rbd"], default="rbd")
    demo.set_defaults(func=_cmd_demo)

    from edgesync.admin.cli import add_admin_commands  # image …, sites, tasks (through the hub's API)

    add_admin_commands(sub)
    from edgesync.adopt.cli import add_adopt_command

    add_adopt_command(sub)
    return parser


def _add_agent_register(agent_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    register = agent_sub.add_parser(
        "register", help="register images created at this site (e.g. Nova snapshots in its pool); "
                         "the hub copies each to central first")
    register.add_argument("--config", required=True, help="the site's file (sites/<site>.toml), as for the agent")
    register.add_argument("images", nargs="+", metavar="IMAGE_ID_OR_RBD_NAME",
                          help="an image id, or its copy's RBD name ([pool/]<uuid>[@snap])")
    register.add_argument("--name", help="the image's name in the catalog")
    register.add_argument("--owner", help="the project owning it (default: the agent's)")
    register.add_argument("--visibility", choices=["private", "shared", "community", "public"],
                          help="default: shared")
    register.set_defaults(func=_cmd_agent_register)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level, getattr(args, "log_format", "text"))
    try:
        return int(args.func(args))
    except EdgesyncError as exc:
        print(f"edgesync: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
