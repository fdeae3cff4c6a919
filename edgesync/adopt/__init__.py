"""`edgesync adopt --from-glance URL`: take over an existing Glance's catalog and
adopt its RBD copies where they lie.

- `source`: the source Glance, read only, and the Keystone credentials for it;
- `run`: the command's loop (images in parallel, progress, summary);
- `record`: a Glance image record as edgesync keeps it, its locations as copies;
- `service`: the hub's side (matching copies to sites, checks, the catalog write,
  hub first), behind `POST /edgesync/v1/adopt/images`;
- `check`: checking one copy where it lies, through the site's `verify` (the
  hub hashes central's copy, an edge's agent its own), so no byte crosses the WAN.
"""
