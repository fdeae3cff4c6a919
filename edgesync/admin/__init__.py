"""The admin CLI: `edgesync image copy|show|delete-from-store`, `edgesync sites`,
`edgesync tasks`, all through the hub's HTTP API with the caller's token.

* `client.py`   the hub's API over aiohttp (the admin's only HTTP user), errors
                translated into edgesync's family
* `progress.py` per-store progress of a copy: rate over a sliding window, ETA
* `render.py`   human formatting: sizes, rates, durations, tables, and the live
                progress display (redrawn in place on a terminal, lines otherwise)
* `commands.py` what each command asks the hub and prints
* `cli.py`      the argparse wiring, hooked into `edgesync.cli`
"""
