"""argparse wiring of `edgesync adopt`; `edgesync.cli` calls `add_adopt_command`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from edgesync.admin.client import HubClient, resolve_connection
from edgesync.adopt.run import RunOptions, adopt_all
from edgesync.adopt.source import GlanceSource, SourceError, SourceOptions, resolve

# A check hashes a whole copy before the hub answers; no image needs this long.
HUB_REQUEST_TIMEOUT_S = 6 * 3600.0

EPILOG = """\
The source is only ever read (GET requests). Run it as often as you like: what
was adopted before is not checked again, so a second run adopts only what changed
in the source or was missed (an interrupted run, a site that was down).

exit status: 0 every image adopted or unchanged; 3 done, with discrepancies (listed);
1 some images could not be sent to the hub; 2 bad options or no connection.
"""


def add_adopt_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    adopt = sub.add_parser("adopt", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                           help="take over a Glance's images and adopt their RBD copies in place")
    adopt.add_argument("--from-glance", metavar="URL", dest="glance_url",
                       help="the source Glance's endpoint (default: the catalog's image endpoint)")
    src = adopt.add_argument_group("source credentials (Keystone)")
    src.add_argument("--os-cloud", help="a cloud of clouds.yaml (default $OS_CLOUD; else the OS_* variables)")
    src.add_argument("--os-token", help="a Keystone token for the source (default $OS_AUTH_TOKEN)")
    src.add_argument("--source-cacert", metavar="FILE", help="CA bundle for an https:// source")
    what = adopt.add_argument_group("what to do")
    what.add_argument("--verify", choices=["full", "sample", "none"], default="full",
                      help="full: hash every copy where it lies (default); sample: a fixed share of the images "
                           "(--sample-percent), the rest only checked published at the right size; none: trust them")
    what.add_argument("--sample-percent", type=_percent, default=10.0, help="with --verify sample (default 10)")
    what.add_argument("--copy-missing", action="store_true",
                      help="copy from central to every store the source had a copy in that could not be adopted")
    what.add_argument("--dry-run", action="store_true", help="print what would be adopted, copied or skipped, and why")
    what.add_argument("--parallel", type=int, default=8, help="images in flight at once (default 8)")
    hub = adopt.add_argument_group("the hub")
    hub.add_argument("--url", help="the hub's URL (default: $EDGESYNC_URL)")
    hub.add_argument("--token", help="an admin token for the hub (default: $EDGESYNC_TOKEN)")
    hub.add_argument("--os-cacert", metavar="FILE", help="CA bundle for an https:// hub")
    hub.add_argument("--lab-dir", metavar="DIR", help="take the hub's URL and admin token from DIR/lab.json")
    adopt.add_argument("--json", action="store_true", help="print the summary and every image's report as JSON")
    adopt.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    conn = resolve_connection(args.url, args.token, args.lab_dir, cacert=args.os_cacert)
    tokens = resolve(SourceOptions(args.glance_url, args.os_token, args.os_cloud, args.source_cacert))
    opts = RunOptions(verify=args.verify, sample_percent=args.sample_percent, copy_missing=args.copy_missing,
                      dry_run=args.dry_run, parallel=max(1, args.parallel), json=args.json)

    async def main() -> int:
        url = args.glance_url or await tokens.image_endpoint()
        if not url:
            raise SourceError("No source Glance: give --from-glance URL (a token alone has no catalog)")
        async with GlanceSource(url, tokens, ca_file=args.source_cacert) as glance, \
                HubClient(conn, timeout_s=HUB_REQUEST_TIMEOUT_S) as hub_client:
            return await adopt_all(glance, hub_client, opts, sys.stdout)

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        print("\nstopped; what was adopted stays adopted: run it again to go on", file=sys.stderr)
        return 130


def _percent(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"a percentage above 0 and at most 100, got {raw!r}")
    return value
