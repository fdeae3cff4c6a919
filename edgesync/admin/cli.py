"""argparse wiring of the admin commands; `edgesync.cli` calls `add_admin_commands`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TextIO

from edgesync.admin import commands, metadefs
from edgesync.admin.client import HubClient, resolve_connection

Command = Callable[[HubClient, argparse.Namespace, TextIO], Awaitable[int]]

COPY_EPILOG = """\
exit status:
  0  every requested store has its copy (or, without --wait, the copy started;
     or there was nothing to copy)
  1  the copy failed: with --no-allow-failure one store failing fails it and every
     store it wrote is rolled back, so the image has no new store; with
     --allow-failure, every store failed
  2  the hub refused the request (the message says why) or an option is wrong
  3  only with --allow-failure: some stores failed, the others kept their copies
     (the failed ones are listed in os_glance_failed_import)

--allow-failure is the default, as in glanceclient (all_stores_must_succeed=false).
Progress counts bytes of data: holes are never copied. Ctrl-C stops watching, not the copy.
"""


def add_admin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`image copy|show|delete-from-store`, `sites` and `tasks`."""
    common = _common_options()
    image = sub.add_parser("image", help="copy an image to stores, show it, delete it from a store (admin)")
    image_sub = image.add_subparsers(dest="image_command", required=True)

    copy = image_sub.add_parser("copy", parents=[common], epilog=COPY_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                help="copy an image to other stores (copy-image), optionally watching it")
    copy.add_argument("image", metavar="IMAGE", help="image id, or a name only one image has")
    where = copy.add_mutually_exclusive_group(required=True)
    where.add_argument("--stores", type=_store_list, help="comma-separated stores, e.g. dcn0,dcn1")
    where.add_argument("--all-stores", action="store_true", help="every store that lacks the image")
    copy.add_argument("--allow-failure", action=argparse.BooleanOptionalAction, default=True,
                      help="keep the stores that succeed when others fail (default); "
                           "--no-allow-failure: all or nothing")
    copy.add_argument("--wait", action="store_true",
                      help="follow the copy per store (bytes, rate, ETA) until it ends; the exit status says how")
    copy.set_defaults(func=_runner(commands.image_copy))

    delete = image_sub.add_parser("delete-from-store", parents=[common],
                                  help="delete the image's copy in one store (never the central copy)")
    delete.add_argument("image", metavar="IMAGE", help="image id, or a name only one image has")
    delete.add_argument("--store", required=True, help="the store (site) whose copy goes")
    delete.set_defaults(func=_runner(commands.image_delete_from_store))

    show = image_sub.add_parser("show", parents=[common],
                                help="an image with its stores, locations and each store's state")
    show.add_argument("image", metavar="IMAGE", help="image id, or a name only one image has")
    show.set_defaults(func=_runner(commands.image_show))

    sites = sub.add_parser("sites", parents=[common],
                           help="each site: AZ, up or down, last heartbeat, copies in flight, free space")
    sites.set_defaults(func=_runner(commands.sites))

    tasks = sub.add_parser("tasks", parents=[common], help="recent import and copy tasks, per-store state")
    tasks.add_argument("--image", metavar="IMAGE", help="only this image's tasks")
    tasks.add_argument("--limit", type=_limit, default=20, help="at most this many, newest first (default 20)")
    tasks.add_argument("--unfinished", action="store_true", help="only tasks still running")
    tasks.set_defaults(func=_runner(commands.tasks))

    defs = sub.add_parser("metadefs", help="metadata definitions (metadefs)")
    defs_sub = defs.add_subparsers(dest="metadefs_command", required=True)
    load = defs_sub.add_parser("load", parents=[common],
                               help="load Glance metadef JSON files (one namespace each) from DIR")
    load.add_argument("dir", metavar="DIR", help="a directory of *.json files, e.g. Glance's etc/metadefs")
    load.add_argument("--replace", action="store_true",
                      help="delete and create again a namespace the hub already has (default: skip it)")
    load.set_defaults(func=_runner(metadefs.load))


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    hub = common.add_argument_group("hub")
    hub.add_argument("--url", help="the hub's URL (default: $EDGESYNC_URL, else $OS_IMAGE_URL)")
    hub.add_argument("--token", help="auth token (default: $EDGESYNC_TOKEN, else $OS_AUTH_TOKEN)")
    hub.add_argument("--os-cacert", metavar="FILE",
                     help="CA bundle to verify an https:// hub with (default: the lab's ca_file, else "
                          "$EDGESYNC_CACERT, else $OS_CACERT, else the system's)")
    hub.add_argument("--lab-dir", metavar="DIR", help="take URL and admin token from DIR/lab.json (a local lab)")
    common.add_argument("--json", action="store_true", help="print JSON for scripts instead of text")
    return common


def _runner(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        conn = resolve_connection(args.url, args.token, args.lab_dir, cacert=args.os_cacert)

        async def main() -> int:
            async with HubClient(conn) as hub:
                return await command(hub, args, sys.stdout)

        try:
            return asyncio.run(main())
        except KeyboardInterrupt:
            if getattr(args, "wait", False):
                print("\nstopped watching; the copy goes on in the hub (edgesync tasks --unfinished)",
                      file=sys.stderr)
            return 130

    return run


def _store_list(raw: str) -> list[str]:
    stores = [s.strip() for s in raw.split(",")]
    if not stores or not all(stores):
        raise argparse.ArgumentTypeError(f"give store names separated by commas, e.g. dcn0,dcn1 (got {raw!r})")
    return list(dict.fromkeys(stores))


def _limit(raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 200:
        raise argparse.ArgumentTypeError(f"a whole number from 1 to 200, got {raw!r}")
    return int(raw)
